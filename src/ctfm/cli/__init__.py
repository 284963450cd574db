"""Command-line layer: parse options, call the library, print. Heavy imports happen inside commands."""
