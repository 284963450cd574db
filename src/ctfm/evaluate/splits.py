"""Which splits flatter the heads, and the note every table and board of such a split carries."""

from __future__ import annotations

# Scores on these splits flatter the heads: they were selected (val) or trained (train) on their cases.
OPTIMISTIC_SPLITS = {
    "val": ("the selection split, optimistic", "the heads were selected on these cases"),
    "train": ("the training split, optimistic", "the heads were trained on these cases"),
}


def split_note(split: str) -> str:
    """``"val: the selection split, optimistic"`` for a split the heads were selected or trained on; else ``""``."""
    return f"{split}: {OPTIMISTIC_SPLITS[split][0]}" if split in OPTIMISTIC_SPLITS else ""


def split_warning(split: str) -> str:
    """The sentence every table and board of an optimistic split carries (console, csv, md, html, json)."""
    if split not in OPTIMISTIC_SPLITS:
        return ""
    return f"{split_note(split)} ({OPTIMISTIC_SPLITS[split][1]}, so every score flatters its model; rank on test)"
