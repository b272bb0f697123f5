"""Whole numbers: every int option of every command is parsed by `whole(RANGE)` and refuses
values outside its range (`--frames 0`, `--seed -1`) and non-integers with one line."""

from __future__ import annotations

import pytest
import typer

from dvkit.cli.app import build_app
from dvkit.cli.context import WholeNumber
from dvkit.errors import DvkitError
from dvkit.ranges import Whole


def _walk() -> tuple[list[tuple[tuple[str, ...], str, Whole]], list[str]]:
    found, undeclared = [], []

    def walk(command, path: tuple[str, ...]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))
        for param in getattr(command, "params", []) if path else []:
            func = getattr(param.type, "func", None)
            if isinstance(func, WholeNumber):
                found.append((path, param.opts[0], func.bounds))
            elif "Int" in type(param.type).__name__ or func is int:
                undeclared.append(f"{' '.join(path)} {param.opts[0]}")

    walk(typer.main.get_command(build_app()), ())
    return found, undeclared


INT_OPTIONS, UNDECLARED = _walk()


def test_every_int_option_is_parsed_by_whole() -> None:
    assert UNDECLARED == []
    options = {(" ".join(path), option) for path, option, _ in INT_OPTIONS}
    assert {("compose", "--frames"), ("compose", "--size"), ("compose", "--seed"),
            ("bench", "--frames"), ("bench", "--size"), ("bench", "--seed"), ("bench", "--steps"),
            ("add-motion", "--frames"), ("add-subject", "--seed"), ("list", "--limit"),
            ("export", "--steps"), ("demo", "--seeds")} <= options  # fmt: skip


@pytest.mark.parametrize(
    ("path", "option", "bounds"),
    INT_OPTIONS,
    ids=[f"{' '.join(p)} {o}" for p, o, _ in INT_OPTIONS],
)
def test_every_int_option_refuses_values_out_of_range(cli, home, path, option, bounds) -> None:
    catalog_bytes = (home / "catalog.db").read_bytes()
    bad = [str(bounds.low - 1), "1.5", "x"]
    if bounds.high is not None:
        bad.append(str(bounds.high + 1))
    for value in bad:
        code, out, err = cli("--home", home, *path, option, value)
        lines = err.strip().splitlines()
        assert code == 2 and out == "", (value, out, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert f"'{option}'" in lines[0] and f"'{value}' is not" in lines[0], err
    assert (home / "catalog.db").read_bytes() == catalog_bytes


def test_the_reported_examples(cli, home) -> None:
    for args, message in [
        (("compose", "--frames", "0"), "'0' is not a whole number from 1 to 256"),
        (("bench", "--size", "0"), "'0' is not a whole number from 8 to 2048"),
        (("compose", "--seed", "-1"), "'-1' is not a whole number from 0 to 4294967295"),
        (("compose", "--frames", "1000"), "'1000' is not a whole number from 1 to 256"),
    ]:
        code, _, err = cli("--home", home, *args)
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_whole_check() -> None:
    assert Whole(1, 3).check("n", 2) == 2
    for value in (0, 4, 1.0, True, "2", None):
        with pytest.raises(DvkitError, match=r"^n must be a whole number from 1 to 3, not "):
            Whole(1, 3).check("n", value)
    assert Whole(0).describe() == "a whole number of at least 0"


def test_a_size_the_base_cannot_take_names_the_nearest() -> None:
    from types import SimpleNamespace

    from dvkit.families import family
    from dvkit.generate.sampler import check_size

    vae = SimpleNamespace(config=SimpleNamespace(block_out_channels=[64, 128, 256, 512]))
    unet = SimpleNamespace(config=SimpleNamespace(in_channels=4))
    base = SimpleNamespace(  # latent factor 8, as real bases
        name="modelscope", vae=vae, unet=unet, family=family("modelscope-t2v")
    )
    assert check_size(base, 256) == 256
    with pytest.raises(DvkitError, match="^size 17 is not a multiple of 8, .*: use 16 or 24$"):
        check_size(base, 17)
    with pytest.raises(DvkitError, match="use 8$"):
        check_size(base, 7)
