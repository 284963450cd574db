"""Progress of long library calls, told to whoever called: the CLI draws bars, everything else passes nothing.

The library never draws: a stage takes a :class:`Progress` (default :data:`NO_PROGRESS`) and reports to it;
``ctfm.cli`` supplies one that draws rich bars on a terminal.

Example:
    >>> with tracked(NO_PROGRESS, "masks", total=3) as advance:
    ...     advance(1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol


class Progress(Protocol):
    """Receives one counted task at a time: ``start``, any number of ``advance``, then ``done``."""

    def start(self, label: str, total: int) -> None:
        """A task of ``total`` steps begins (``label``: plain text, e.g. ``masks`` or a team's name)."""

    def advance(self, n: int = 1, label: str | None = None) -> None:
        """``n`` more steps are finished; ``label``, when given, replaces the task's label."""

    def done(self) -> None:
        """The task has ended (finished or not)."""


class _NoProgress:
    """Reports go nowhere: tests, benchmarks, cluster tasks and library callers that did not ask."""

    def start(self, label: str, total: int) -> None:
        pass

    def advance(self, n: int = 1, label: str | None = None) -> None:
        pass

    def done(self) -> None:
        pass


NO_PROGRESS: Progress = _NoProgress()


@contextmanager
def tracked(progress: Progress, label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A task on ``progress`` for the ``with`` block; yields its ``advance``. It is done however the block
    ends."""
    progress.start(label, total)
    try:
        yield progress.advance
    finally:
        progress.done()
