"""Command-line layer: parse options, call the library, print. Heavy imports happen inside commands."""

from typing import Any

from rich.markup import escape

from ctfm.benchmark import load_benchmark


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
    from ctfm.errors import ConfigError

    items = split_list(values)
    if len(items) > 1:
        raise ConfigError(
            f"{option} takes one value here, not {', '.join(items)}: run the command once per value"
        )
    return items[0] if items else None
