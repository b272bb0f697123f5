"""Entry point: runs the Typer app and turns every user error into one line on stderr."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import typer

from dvkit.errors import DvkitError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> None:
    """Run `dvkit` with `argv` (default: the process arguments) and exit with its status."""
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    """Run `dvkit` and return its exit status instead of exiting."""
    from dvkit.cli.app import app

    logging.getLogger().addHandler(logging.NullHandler())  # library chatter stays off stderr
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="dvkit", standalone_mode=False)
    except DvkitError as exc:
        return _fail(str(exc), exc.exit_code)
    except typer.TyperException as exc:
        return _fail(exc.format_message(), getattr(exc, "exit_code", EXIT_USAGE))
    except typer.Abort:
        return _fail("aborted", EXIT_ERROR)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    return result if isinstance(result, int) else 0


def _fail(message: str, code: int) -> int:
    first_line = " ".join(message.split())
    print(f"error: {first_line}", file=sys.stderr)
    return code
