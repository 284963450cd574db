"""What a team container left in its output folder: found by name, listed one level deep, judged as a whole.

Nothing in a container's output folder is trusted, so the folder is never walked: the expected
``<case>.h5`` files are looked up by name (each then read as untrusted, see :mod:`ctfm.store.untrusted`) and the
other entries are listed one level deep, up to a limit, only to be reported (never stored, as under
``check-container``). Across cases, embeddings that are constant or identical for every case are a broken
extractor's signature.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

OUTPUT_SUFFIX = ".h5"
LIST_LIMIT = 1000  # entries of an output folder listed for the report


def present_outputs(out_dir: Path, cases: list[str]) -> dict[str, tuple[int, int]]:
    """``case -> (size, mtime_ns)`` of each ``<case>.h5`` entry, looked up by name (any file type)."""
    present = {}
    for case in cases:
        with contextlib.suppress(OSError):
            st = os.lstat(Path(out_dir) / f"{case}{OUTPUT_SUFFIX}")
            present[case] = (st.st_size, st.st_mtime_ns)
    return present


def stray_entries(out_dir: Path, cases: list[str], limit: int = LIST_LIMIT) -> list[str]:
    """Names of the other entries of an output folder, one level deep, at most ``limit`` of them (then a
    last ``(and more)``): listed for the report, never read."""
    wanted = {f"{c}{OUTPUT_SUFFIX}" for c in cases}
    stray: list[str] = []
    with contextlib.suppress(OSError), os.scandir(out_dir) as entries:
        for entry in entries:
            if entry.name in wanted:
                continue
            if len(stray) == limit:
                return [*sorted(stray), "(and more)"]
            stray.append(printable(entry.name))
    return sorted(stray)


def printable(name: str) -> str:
    """A file name a container chose, safe to print on one line."""
    return name if name.isprintable() else ascii(name)


def feature_dim(arr: np.ndarray) -> int:
    """D of an lp vector ``[D]`` or an eao map ``[D, h, w, l]``."""
    return int(arr.shape[0])


def embedding_problems(arrays: dict[str, np.ndarray]) -> list[str]:
    """Signs of a broken extractor: constant embeddings, or all cases giving the same embedding."""
    problems = []
    constant = [c for c, a in arrays.items() if a.size and np.ptp(a.astype(np.float64)) == 0]
    if constant:
        problems.append(f"constant embedding (all values equal) for {', '.join(sorted(constant))}")
    items = [a for _, a in sorted(arrays.items())]
    if len(items) >= 2 and all(a.shape == items[0].shape and np.array_equal(a, items[0]) for a in items[1:]):
        problems.append(f"collapsed: all {len(items)} cases have the identical embedding")
    return problems
