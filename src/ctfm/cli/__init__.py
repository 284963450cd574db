"""Command-line layer: parse options, call the library, print. Heavy imports happen inside commands."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from copy import copy
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from ctfm.core.benchmark import load_benchmark

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Column, Table
    from rich.text import TextType

_UNLIMITED = 1_000_000  # console width for piped tables: rows are never wrapped
_NAME_ROOM = 4  # the least width a name column keeps when a narrow terminal folds names to show values whole


def default(section: str, key: str) -> Any:
    """An option default from ``configs/benchmark.yaml``, which ``ctfm run`` uses too; read when the command
    is defined, so ``--help`` shows it."""
    return load_benchmark().default(section, key)


def plain(value: object) -> str:
    """A value shown as text inside a rich markup line, never read as markup: paths, case and team names and
    error messages can hold ``[...]``, which rich would style, hide or refuse."""
    return escape(str(value))


def split_list(values: list[str] | None) -> list[str]:
    """``["1e-3,1e-2", "0.1"]`` -> ``["1e-3", "1e-2", "0.1"]`` (commas or spaces separate values)."""
    out: list[str] = []
    for v in values or []:
        out.extend(t for t in v.replace(",", " ").split() if t)
    return out


def one_value(values: list[str] | None, option: str) -> str | None:
    """The single value of an option a command takes once: repeating it is refused, never silently cut."""
    from ctfm.core.errors import ConfigError

    items = split_list(values)
    if len(items) > 1:
        raise ConfigError(
            f"{option} takes one value here, not {', '.join(items)}: run the command once per value"
        )
    return items[0] if items else None


def new_console(stderr: bool = False) -> Console:
    """A rich console that prints each message on one line when piped or redirected (rich folds lines at 80
    columns there, splitting paths and case names across lines of a log); on a terminal it wraps as usual."""
    from rich.console import Console

    console = Console(stderr=stderr)
    console.soft_wrap = not console.is_terminal
    return console


def print_table(table: Table, console: Console | None = None, keys: int = 1) -> None:
    """Print ``table`` so that it stays readable wherever it goes (rich alone squeezes a wide table into the
    terminal, or into 80 columns when piped, wrapping numbers and cutting headers to "…").

    On a terminal too narrow for it, the columns are split over several tables that each repeat the first
    ``keys`` columns (the names a row is read by), so no cell is cut or wrapped; only where not even one value
    fits beside the names do the names fold inside their cells. Piped or redirected, it is printed plain: no
    borders and no width limit, one line per row, for logs and ``grep``."""
    console = console or new_console()
    if console.is_terminal:
        for part in _column_parts(table, console, keys):
            console.print(part)
    else:
        _print_plain(table, console)


def _print_plain(table: Table, console: Console) -> None:
    """One unbroken line per row, columns aligned by spaces, no trailing blanks."""
    from rich.console import Console

    if table.title:
        console.print(table.title, soft_wrap=True, highlight=False)
    flat = _sub_table(table, range(len(table.columns)), title=None)
    flat.box, flat.pad_edge = None, False
    flat.columns = [replace(column, no_wrap=True) for column in flat.columns]
    buffer = io.StringIO()
    Console(file=buffer, width=_UNLIMITED, color_system=None, force_terminal=False).print(flat, crop=False)
    console.out("\n".join(line.rstrip() for line in buffer.getvalue().splitlines()), highlight=False)


def _column_parts(table: Table, console: Console, keys: int) -> list[Table]:
    """``table``, or tables of its key columns and as many other columns as fit the console's width."""
    widths = [_content_width(console, column) for column in table.columns]
    _, right, _, left = table.padding
    border = 1 if table.box else 0

    def fits(content: list[int]) -> bool:
        edges = border if table.show_edge else -border  # n columns: n + 1 or n - 1 rules
        return sum(w + left + right + border for w in content) + edges <= console.width

    key_columns = list(range(min(keys, len(widths))))
    key_widths = [widths[i] for i in key_columns]
    groups: list[list[int]] = [[]]
    for index in range(len(key_columns), len(widths)):
        if groups[-1] and not fits(key_widths + [widths[i] for i in groups[-1]] + [widths[index]]):
            groups.append([])
        groups[-1].append(index)
    parts = []
    for n, group in enumerate(groups):
        part = _sub_table(table, key_columns + group, title=table.title if n == 0 else None)
        values = [widths[i] for i in group]
        if not fits(key_widths + values):  # names too long for even one value beside them
            _fold_names(part, len(key_columns), values_whole=fits([_NAME_ROOM] * len(key_columns) + values))
        parts.append(part)
    return parts


def _fold_names(part: Table, keys: int, values_whole: bool) -> None:
    """Let the key columns of ``part`` wrap inside their cells (nothing hidden) and, where there is room, keep
    every other cell on one line: rich narrows wrappable columns first."""
    for n, column in enumerate(part.columns):
        if n < keys:
            column.no_wrap, column.overflow = False, "fold"
        elif values_whole:
            column.no_wrap = True


def _content_width(console: Console, column: Column) -> int:
    """The width a column needs to show its header and every cell unbroken."""
    return max(console.measure(cell).maximum for cell in (column.header, *column.cells))


def _sub_table(table: Table, indices: Iterable[int], title: TextType | None) -> Table:
    """A copy of ``table`` (same style and rows) holding only the columns at ``indices``."""
    part = copy(table)
    part.title = title
    part.columns = [replace(table.columns[i], _index=n) for n, i in enumerate(indices)]
    return part


def first_names(names: list[str], shown: int = 5) -> str:
    """The first ``shown`` names, comma-separated, with ", ..." when there are more (markup-safe)."""
    return plain(", ".join(names[:shown]) + (", ..." if len(names) > shown else ""))


class _ConsoleHandler(logging.Handler):
    """Prints the library's plain-text log records on a rich console: warnings yellow, errors red."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        style = (
            "red"
            if record.levelno >= logging.ERROR
            else "yellow"
            if record.levelno >= logging.WARNING
            else None
        )
        self.console.print(record.getMessage(), style=style, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def library_log(console: Console) -> Iterator[None]:
    """While a command runs, the ``ctfm`` library's log lines (INFO and up) print on ``console``."""
    logger = logging.getLogger("ctfm")
    handler, level = _ConsoleHandler(console), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
