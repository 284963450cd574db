"""A Progress (``ctfm.core.progress``) that writes down what it is told, for tests of the library's reports."""

from __future__ import annotations


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def start(self, label: str, total: int) -> None:
        self.events.append(("start", label, total))

    def advance(self, n: int = 1, label: str | None = None) -> None:
        self.events.append(("advance", n))

    def done(self) -> None:
        self.events.append(("done",))
