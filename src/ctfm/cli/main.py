"""The ``ctfm`` command. Each subcommand group lives in its own module under ``ctfm.cli``."""

from __future__ import annotations

import importlib
import sys
import warnings

import typer

from ctfm import __version__
from ctfm.cli import new_console, plain
from ctfm.core.errors import CtfmError

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
    "cluster",
]

app = typer.Typer(
    name="ctfm",
    help="Score 3D CT foundation models: data, masks, extraction, probing, evaluation, leaderboards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = new_console(stderr=True)
# Click's exception base (typer may vendor click, so it is found through an exception typer exports)
_CLICK_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


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
    """Entry point: user mistakes (click usage errors and CtfmError) are one red line, exit 2; file system
    errors (no permission, read-only or full disk) one red line naming the file, exit 1; Ctrl-C exits 130."""
    warnings.showwarning = _show_warning
    try:
        code = app(args=argv, prog_name="ctfm", standalone_mode=False)
    except _CLICK_ERROR as exc:
        if line := _click_line(exc):  # none when a bare group has printed its help
            _error(line)
        sys.exit(getattr(exc, "exit_code", 2))
    except typer.Abort:  # end of input at a prompt
        _error("aborted")
        sys.exit(1)
    except CtfmError as exc:
        _error(str(exc))
        sys.exit(2)
    except OSError as exc:  # an unwritable or full disk, a file where a folder belongs: no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        _error(where + (exc.strerror or str(exc)))
        sys.exit(1)
    if code == 130:
        _error(_interrupted_line(sys.argv[1:] if argv is None else argv))
    if isinstance(code, int) and code:
        sys.exit(code)


# Commands that skip finished work when run again; the others start over (every file they write is atomic).
RESUMING = {"masks", "extract", "probe", "run", "demo", "data synth", "data download", "store export"}


def _interrupted_line(argv: list[str]) -> str:
    words = []
    for token in argv:
        if token.startswith("-") or len(words) == 2:
            break
        words.append(token)
    if words and (words[0] in RESUMING or " ".join(words) in RESUMING):
        return "interrupted: finished work is kept; run the same command again to resume"
    return "interrupted: no file was left half-written; run the same command again to start over"


def _show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    """A library's warning as one yellow line, without the source file and line Python prints below it."""
    text = " ".join(str(message).split())
    err_console.print(
        f"[yellow]warning:[/] {category.__name__}: {plain(text)}", highlight=False, soft_wrap=True
    )


def _error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {plain(message)}", highlight=False, soft_wrap=True)


def _click_line(exc: Exception) -> str:
    """Click's message on one line, naming the command and where its help is (no boxed panel)."""
    text = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    if ctx is None or not text:
        return text
    return f"{ctx.command_path}: {text} (see '{ctx.command_path} --help')"


if __name__ == "__main__":
    main()
