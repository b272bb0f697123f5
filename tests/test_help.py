"""`--help` of every command: every option and argument has a description, and defaults show
in one style, `[default: …]` after it (typer's for plain values, `described` for the rest)."""

from __future__ import annotations

import re

import pytest
import typer

from dvkit.cli.app import build_app
from dvkit.cli.help import BASE_DEFAULT, DEFAULT_MARK


def _walk() -> list[tuple[str, object]]:
    """(command path, parameter) of every visible parameter of every command."""
    found = []

    def walk(command, path: tuple[str, ...]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))
        for param in getattr(command, "params", []) if path else []:
            if not getattr(param, "hidden", False):
                found.append((" ".join(path), param))

    walk(typer.main.get_command(build_app()), ())
    return found


PARAMS = _walk()


def test_the_walk_finds_every_command() -> None:
    commands = {path for path, _ in PARAMS}
    assert {"compose", "bench", "export", "add-subject", "add-motion", "score", "demo",
            "import", "list", "base add", "sprites clips"} <= commands  # fmt: skip


@pytest.mark.parametrize(("path", "param"), PARAMS, ids=[f"{p} {q.name}" for p, q in PARAMS])
def test_every_option_has_a_description_and_states_defaults_in_one_style(path, param) -> None:
    text = param.help or ""
    assert text.strip(), f"{path} {param.opts[0]} has no help"
    prose = text.split("\\" + DEFAULT_MARK)[0].lower().replace("default base", "")
    prose = prose.replace("make the default", "").replace("print the default", "")
    assert "default" not in prose, f"{path} {param.opts[0]}: a default outside [default: …]"
    assert not re.search(r"(?<!\\)\[", text), f"{path} {param.opts[0]}: rich would eat [...]"


@pytest.mark.parametrize("command", ["compose", "bench", "export"])
def test_sampling_defaults_show_as_the_bases(cli, command) -> None:
    code, out, _ = cli(command, "--help")
    assert code == 0
    flat = " ".join(out.replace("│", " ").split())
    for option in ("--steps", "--guidance", "--motion-until", "--offset-noise"):
        assert re.search(rf"{option} [^[]*?\[default: {re.escape(BASE_DEFAULT)}\]", flat), option
    assert "[default: (" not in flat
