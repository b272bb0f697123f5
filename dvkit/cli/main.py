"""Entry point: runs the Typer app and turns every user error into one line on stderr.

Under a launcher (`torchrun`, `accelerate launch`: WORLD_SIZE > 1), only rank 0 prints usage
errors and interrupts: every rank parses the same command line and is stopped by the same
signal, so the other ranks exit with the same status silently. Errors of a rank's own work
still print on that rank (and reach rank 0 through the launcher's store, see
`dvkit.evaluate.ranks`).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence

import typer

from dvkit.errors import DvkitError, DvkitWarning, Terminated

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def main(argv: Sequence[str] | None = None) -> None:
    """Run `dvkit` with `argv` (default: the process arguments) and exit with its status."""
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    """Run `dvkit` and return its exit status instead of exiting."""
    from dvkit.cli.app import build_app

    logging.getLogger().addHandler(logging.NullHandler())  # library chatter stays off stderr
    args = hoist_home(list(sys.argv[1:] if argv is None else argv))
    command = typer.main.get_command(build_app(_command_name(args)))
    command.invoke = _passing_interrupts(command.invoke)  # type: ignore[method-assign]
    quiet = _other_rank()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", DvkitWarning)  # each distinct warning once
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            result = command.main(args=args, prog_name="dvkit", standalone_mode=False)
    except DvkitError as exc:
        return _fail(str(exc), exc.exit_code, quiet and exc.exit_code in INTERRUPTED)
    except typer.TyperException as exc:
        return _fail(exc.format_message(), getattr(exc, "exit_code", EXIT_USAGE), quiet)
    except typer.Abort:
        return _fail("aborted", EXIT_ERROR, quiet)
    except (KeyboardInterrupt, _Interrupted) as exc:
        cause = exc.__cause__ if isinstance(exc, _Interrupted) else exc
        if isinstance(cause, Terminated):
            return _fail("stopped by SIGTERM", EXIT_TERMINATED, quiet)
        return _fail("interrupted", EXIT_INTERRUPTED, quiet)
    return result if isinstance(result, int) else 0


INTERRUPTED = (EXIT_INTERRUPTED, EXIT_TERMINATED)
"""Exit statuses of a run stopped by a signal (SIGINT, SIGTERM)."""


class _Interrupted(Exception):
    """A KeyboardInterrupt carried past Typer, which turns one into a silent exit 130."""


def _passing_interrupts(invoke: Callable[[typer.Context], object]) -> Callable[..., object]:
    """`invoke` raising `_Interrupted` (from the KeyboardInterrupt) where it is interrupted."""

    def invoke_passing_interrupts(ctx: typer.Context) -> object:
        try:
            return invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted from exc

    return invoke_passing_interrupts


def _other_rank() -> bool:
    """Whether this process is a rank other than 0 of a launcher's run (RANK > 0)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0"


def hoist_home(args: list[str]) -> list[str]:
    """`dvkit list --home X` as `dvkit --home X list`: the global `--home X` (or `--home=X`) is
    accepted anywhere before a `--`; the last one given wins. A `--home` with no value comes
    back alone, for click to refuse."""
    front: list[str] = []
    rest: list[str] = []
    values = iter(args)
    for arg in values:
        if arg == "--":
            rest += [arg, *values]
        elif arg == "--home":
            value = next(values, None)
            if value is None:
                return [arg]  # click refuses it: the option requires an argument
            front = [arg, value]
        elif arg.startswith("--home="):
            front = ["--home", arg.removeprefix("--home=")]
        else:
            rest.append(arg)
    return front + rest


def _command_name(args: list[str]) -> str | None:
    """The first word after the global options (`--home PATH`, `--version`, `--help`)."""
    values = iter(args)
    for arg in values:
        if arg == "--home":
            next(values, None)
        elif not arg.startswith("-"):
            return arg
    return None


def _one_line_warnings(show: Callable[..., None]) -> Callable[..., None]:
    """A `warnings.showwarning` that prints dvkit's own warnings as one `warning: ...` line on
    stderr and passes the others to `show`."""

    def show_warning(message: Warning | str, category: type[Warning], *args: object) -> None:
        if issubclass(category, DvkitWarning):
            print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)
        else:
            show(message, category, *args)

    return show_warning


def _fail(message: str, code: int, quiet: bool = False) -> int:
    """Print `message` as one `error:` line (nothing when `quiet`) and return `code`."""
    if not quiet:
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return code
