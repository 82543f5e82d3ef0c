"""What the command-line entry points share, below all of them (relay-server and relay-sink import it)."""

from __future__ import annotations

import sys

import click

__all__ = ["run_click"]


def run_click(command: click.Command, prog: str, argv: list[str] | None = None) -> None:
    """Run a click command with one-line errors: `PROG: error: ...` on stderr and exit code 2, never click's
    multi-line usage block."""
    try:
        command.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        print(f"{prog}: error: {exc.format_message()}", file=sys.stderr)
        sys.exit(2)
