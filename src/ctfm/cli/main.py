"""The ``ctfm`` command. Each subcommand group lives in its own module under ``ctfm.cli``."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from ctfm import __version__
from ctfm.cli import plain
from ctfm.errors import CtfmError

# Modules under ctfm.cli, in pipeline order; each exposes `register(app)` adding its command(s).
COMMAND_MODULES: list[str] = [
    "data",
    "masks",
    "store",
    "extract",
    "check_container",
    "probe",
    "evaluate",
    "run",
]

app = typer.Typer(
    name="ctfm",
    help="Score 3D CT foundation models: data, masks, extraction, probing, evaluation, leaderboards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ctfm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """ctfm: the toolkit that scores 3D CT foundation models."""


def _register() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"ctfm.cli.{name}")
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors are click's short messages; user mistakes (CtfmError) one red line, exit 2;
    file system errors (no permission, read-only or full disk) one red line naming the file, exit 1."""
    try:
        app(args=argv, prog_name="ctfm")
    except CtfmError as exc:
        err_console.print(f"[bold red]error:[/] {plain(exc)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as exc:  # an unwritable or full disk, a file where a folder belongs: no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        err_console.print(
            f"[bold red]error:[/] {plain(where + (exc.strerror or str(exc)))}",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
