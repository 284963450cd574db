"""Command-line layer: parse options, call the library, print. Heavy imports happen inside commands."""

from rich.markup import escape


def plain(value: object) -> str:
    """A value shown as text inside a rich markup line, never read as markup: paths, case and team names and
    error messages can hold ``[...]``, which rich would style, hide or refuse."""
    return escape(str(value))
