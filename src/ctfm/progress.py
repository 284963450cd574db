"""Progress bars on stderr, drawn only when stderr is a terminal: piped or captured output stays clean."""

from __future__ import annotations

from typing import Any


def progress_bar(label: str, enabled: bool = True, transient: bool = False) -> Any:
    """A rich ``Progress`` (label, bar, done/total, time left); a disabled one when not ``enabled``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not (enabled and console.is_terminal),
    )
