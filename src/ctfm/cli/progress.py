"""Progress bars on stderr for the library's :class:`ctfm.core.progress.Progress` reports, drawn only when
stderr is a terminal: piped or captured output stays clean."""

from __future__ import annotations

from typing import Any

from ctfm.cli import plain


class BarProgress:
    """A rich bar per task (label, bar, done/total, time left); each ``start`` draws a new one below the last.

    ``transient``: a bar disappears once its task is done (e.g. epochs under a bar over diseases)."""

    def __init__(self, transient: bool = False) -> None:
        self.transient = transient
        self._bar: Any = None
        self._task: Any = None

    def start(self, label: str, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.done()
        console = Console(stderr=True)
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=self.transient,
            disable=not console.is_terminal,
        )
        self._bar.start()
        self._task = self._bar.add_task(plain(label), total=total)

    def advance(self, n: int = 1, label: str | None = None) -> None:
        if self._bar is not None:
            extra = {} if label is None else {"description": plain(label)}
            self._bar.update(self._task, advance=n, **extra)

    def done(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
