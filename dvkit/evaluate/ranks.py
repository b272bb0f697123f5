"""Messages between the ranks of a grid run by `torchrun` or `accelerate launch`.

Rank 0 alone opens the catalog. It sends the grid to the other ranks once (`share`: a
torch.distributed broadcast, so no host but rank 0's needs the catalog's files); then every rank
sends its finished cells one by one through the launcher's key-value store (the TCPStore at
MASTER_ADDR:MASTER_PORT), where rank 0 collects them as they arrive (`Link.received`).

While a rank works, a thread of it beats in the store. Rank 0 takes a rank that reported an
error, or whose beats stopped for `timeout` seconds, as stopped (`Link.check` raises
`RankStopped`). When one rank dies, `torchrun` and `srun` stop the others with SIGTERM: each
other rank says so in the store (`Link.told`) and rank 0, stopped too, takes the rank that did
not say so and does not beat as the one that died (`Link.silent`). Rank 0 ends the run for
everyone with `Link.stop` (after an error or Ctrl-C): the other ranks' beat threads see it, or
see that the store is gone, and interrupt their work.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import torch.distributed as dist
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from dvkit.distributed import World
from dvkit.errors import DvkitError

BEAT = 1.0
"""Seconds between a working rank's beats."""
POLL = 0.2
"""Seconds rank 0 waits between looks at the store once its own cells are done."""
STORE_TIMEOUT = timedelta(seconds=60)
"""How long one call to the store may wait (to connect, or for a busy store to answer)."""


class RankStopped(DvkitError):
    """A rank of a grid stopped before sending all its cells (an error, a crash, no word)."""


def assign(costs: Sequence[float], ranks: int) -> list[list[int]]:
    """Indices of `costs` dealt to `ranks` ranks, the costliest first, each to the rank with the
    least so far (longest processing time first; ties go to the lower rank); each rank's
    indices in ascending order."""
    loads = [0.0] * ranks
    shares: list[list[int]] = [[] for _ in range(ranks)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(ranks), key=lambda r: (loads[r], r))
        shares[rank].append(index)
        loads[rank] += costs[index]
    return [sorted(share) for share in shares]


def share(world: World, payload: object) -> object:
    """Rank 0's `payload` on every rank: rank 0 passes it (None tells the others that there is
    no grid), the other ranks pass anything and get it. Raises `RankStopped` when a rank is
    gone before it arrives."""
    box = [payload]
    try:
        dist.broadcast_object_list(box, src=0)
    except RuntimeError as exc:
        who = "a rank" if world.main else "rank 0"
        raise RankStopped(f"{who} stopped before the grid was sent ({_first_line(exc)})") from None
    return box[0]


class Link:
    """One rank's end of a grid's messages, named by the grid's `run` (unique per run)."""

    def __init__(self, world: World, run: str, timeout: float) -> None:
        self.world, self.timeout = world, timeout
        self._prefix = f"dvkit-grid/{run}"
        self._store = _client()
        self._sent = 0
        self._received = dict.fromkeys(range(1, world.size), 0)
        now = time.monotonic()
        self._heard = dict.fromkeys(range(1, world.size), (0, now))
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._closing = threading.Lock()
        self._beats: threading.Thread | None = None

    def _key(self, *parts: object) -> str:
        return "/".join([self._prefix, *map(str, parts)])

    # The ranks other than 0.

    def beat(self) -> None:
        """Beat for this rank in a thread until `close`; when rank 0 says stop (or is gone),
        set `stopped` and interrupt the main thread (a KeyboardInterrupt there, at the latest
        in `close`)."""
        store = _client()  # the thread's own: the main thread uses the other
        self._beats = threading.Thread(
            target=self._beat, args=(store,), name="dvkit-grid-beat", daemon=True
        )
        self._beats.start()

    def _beat(self, store: dist.TCPStore) -> None:
        beats, stop = self._key("beat", self.world.rank), self._key("stop")
        while not self._done.is_set():
            try:
                store.add(beats, 1)
                told = store.check([stop])
            except RuntimeError:  # the store went with rank 0
                told = True
            if told:
                with self._closing:
                    if not self._done.is_set():
                        self._stopping.set()
                        _thread.interrupt_main()
                return
            self._done.wait(BEAT)

    @property
    def stopped(self) -> bool:
        """Whether rank 0 ended the run (or went away)."""
        return self._stopping.is_set()

    def send(self, message: dict[str, Any]) -> None:
        """Send `message` to rank 0: numpy arrays and JSON values by name (see `encode`);
        `RankStopped` when rank 0 is gone."""
        try:
            self._store.set(self._key("cell", self.world.rank, self._sent), encode(message))
            self._sent += 1
            self._store.add(self._key("sent", self.world.rank), 1)
        except RuntimeError:
            raise RankStopped("rank 0 stopped: this rank's cells have nowhere to go") from None

    def told(self) -> None:
        """Tell rank 0 (when it is still there) that a signal stopped this rank: the launcher
        stops every rank when one dies, and rank 0 names the one that did not say so."""
        with contextlib.suppress(RuntimeError):
            _stored(self._store, self._key("told", self.world.rank), "1")

    def fail(self, message: str) -> None:
        """Tell rank 0 (when it is still there) why this rank stops."""
        with contextlib.suppress(RuntimeError):  # rank 0 is gone: nobody to tell
            _stored(self._store, self._key("error", self.world.rank), message)

    def close(self) -> None:
        """Stop beating."""
        with self._closing:
            self._done.set()
        if self._beats is not None:
            self._beats.join()

    # Rank 0.

    def received(self) -> list[tuple[int, dict[str, Any]]]:
        """Every message sent since the last call, as (rank, message), each rank's in order."""
        messages = []
        for rank, count in self._received.items():
            sent = self._store.add(self._key("sent", rank), 0)
            for number in range(count, sent):
                key = self._key("cell", rank, number)
                messages.append((rank, decode(self._store.get(key))))
                self._store.delete_key(key)
            self._received[rank] = sent
        return messages

    def check(self, ranks: Iterable[int]) -> None:
        """Raise `RankStopped` for the first of `ranks` that reported an error, was stopped by a
        signal while rank 0 was not (another host's launcher stopped it) or has not beaten for
        `timeout` seconds."""
        now = time.monotonic()
        for rank in ranks:
            error = self._key("error", rank)
            if self._store.check([error]):
                message = self._store.get(error).decode()
                raise RankStopped(f"rank {rank} stopped: {message}")
            if self._store.check([self._key("told", rank)]):
                raise RankStopped(
                    f"rank {rank} stopped: a signal stopped it (its host's launcher stops every "
                    "rank there when one dies); the cells finished so far are stored, re-run to "
                    "make the rest"
                )
            beats = self._store.add(self._key("beat", rank), 0)
            last, since = self._heard[rank]
            if beats != last:
                self._heard[rank] = (beats, now)
            elif now - since > self.timeout:
                raise RankStopped(
                    f"rank {rank} stopped: no word from it for {self.timeout:g} s (its process "
                    "died or hangs); the cells finished so far are stored, re-run to make the rest"
                )

    def silent(self, ranks: Sequence[int], wait: float, between: Callable[[], None]) -> int | None:
        """The first of `ranks` that within `wait` seconds neither beat nor said it was `told`
        to stop (its process is gone), else None as soon as every one did; `between` runs after
        each look."""
        beats = {rank: self._store.add(self._key("beat", rank), 0) for rank in ranks}
        deadline = time.monotonic() + wait
        while True:
            quiet = [
                rank for rank in ranks
                if not self._store.check([self._key("told", rank)])
                and self._store.add(self._key("beat", rank), 0) == beats[rank]
            ]  # fmt: skip
            between()
            if not quiet or time.monotonic() >= deadline:
                return quiet[0] if quiet else None
            time.sleep(POLL)

    def stop(self) -> None:
        """Tell every other rank to stop."""
        _stored(self._store, self._key("stop"), "1")


def encode(message: dict[str, Any]) -> bytes:
    """`message` as safetensors bytes: its numpy arrays as tensors, the other values as JSON in
    the header's metadata. Nothing is pickled: the store is a network port, and what arrives
    there is read as data only (`decode`)."""
    arrays = {k: np.ascontiguousarray(v) for k, v in message.items() if isinstance(v, np.ndarray)}
    values = {k: v for k, v in message.items() if k not in arrays}
    return save_arrays(arrays, metadata={"values": json.dumps(values)})


def decode(data: bytes) -> dict[str, Any]:
    """The message `encode` wrote."""
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    return {**json.loads(header["__metadata__"]["values"]), **load_arrays(data)}


def _client() -> dist.TCPStore:
    """A client of the launcher's store (MASTER_ADDR:MASTER_PORT)."""
    return dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
        timeout=STORE_TIMEOUT,
    )  # fmt: skip


def _stored(store: dist.TCPStore, key: str, value: str) -> None:
    """Set `key` and return once the store holds it (a set is not answered; a check on the same
    connection is, after it), so that other clients see it from then on."""
    store.set(key, value)
    store.check([key])


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
