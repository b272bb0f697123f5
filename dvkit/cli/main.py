"""Entry point: runs the Typer app and turns every user error into one line on stderr."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable, Sequence

import typer

from dvkit.errors import DvkitError, DvkitWarning

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> None:
    """Run `dvkit` with `argv` (default: the process arguments) and exit with its status."""
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    """Run `dvkit` and return its exit status instead of exiting."""
    from dvkit.cli.app import build_app

    logging.getLogger().addHandler(logging.NullHandler())  # library chatter stays off stderr
    args = hoist_home(list(sys.argv[1:] if argv is None else argv))
    command = typer.main.get_command(build_app(_command_name(args)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", DvkitWarning)  # each distinct warning once
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            result = command.main(args=args, prog_name="dvkit", standalone_mode=False)
    except DvkitError as exc:
        return _fail(str(exc), exc.exit_code)
    except typer.TyperException as exc:
        return _fail(exc.format_message(), getattr(exc, "exit_code", EXIT_USAGE))
    except typer.Abort:
        return _fail("aborted", EXIT_ERROR)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    return result if isinstance(result, int) else 0


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


def _fail(message: str, code: int) -> int:
    first_line = " ".join(message.split())
    print(f"error: {first_line}", file=sys.stderr)
    return code
