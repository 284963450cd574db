"""The reference timing file ``<image>_feature_extraction_time.csv``: columns ``CaseName`` (``<case>.nii.gz``)
and ``RunningTime`` (seconds), as the reference runner writes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctfm.core.errors import StoreError
from ctfm.core.fsutil import atomic_path
from ctfm.store.layout import sanitize_name

TIMING_COLUMNS = ("CaseName", "RunningTime")


def _image_suffix() -> str:
    from ctfm.core.benchmark import load_benchmark

    return str(load_benchmark().raw.get("image_suffix", ".nii.gz"))


def _timing_template() -> str:
    from ctfm.core.benchmark import load_benchmark

    return str(load_benchmark().section("container")["timing_csv"])


def timing_csv_name(image: str) -> str:
    """``acme_lp`` -> ``acme_lp_feature_extraction_time.csv``, the reference runner's timing file name."""
    return _timing_template().format(image=sanitize_name(image))


def write_timing_csv(path: Path, seconds: dict[str, float]) -> Path:
    """Write one row per case, in case order (``CaseName`` is the image file name, like the reference's)."""
    import pandas as pd

    suffix = _image_suffix()
    rows = [{"CaseName": f"{c}{suffix}", "RunningTime": round(seconds[c], 4)} for c in sorted(seconds)]
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=list(TIMING_COLUMNS)).to_csv(tmp, index=False)
    return path


def read_timing_csv(path: Path) -> dict[str, float]:
    """Seconds per case of a reference timing CSV (columns ``CaseName`` = ``<case>.nii.gz``, ``RunningTime``).

    A malformed file raises :class:`StoreError` naming it and the row, before anything is imported.
    """
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)  # the text as written, for messages
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise StoreError(f"{path}: not a readable timing CSV ({type(exc).__name__}: {exc})") from None
    missing = [c for c in TIMING_COLUMNS if c not in table.columns]
    if missing:
        raise StoreError(
            f"{path}: no column {', '.join(missing)} (a reference timing CSV has CaseName, RunningTime)"
        )
    suffix = _image_suffix()
    seconds: dict[str, float] = {}
    for line, (name, value) in enumerate(zip(table["CaseName"], table["RunningTime"], strict=True), start=2):
        secs = pd.to_numeric(value, errors="coerce")
        if not isinstance(name, str) or not name.strip() or not np.isfinite(secs) or secs < 0:
            raise StoreError(f"{path}, line {line}: {name!r}, {value!r} is not a case name and seconds >= 0")
        name = name.strip()
        seconds[name.removesuffix(suffix).removesuffix(".nii")] = float(secs)  # a rerun's later row wins
    return seconds


def find_timing_csv(h5_dir: Path, image: str) -> Path | None:
    """The reference timing CSV beside imported ``.h5`` files: the only one there, or the one named after
    ``image`` (the view's ``<model>_<task>``) when there are several."""
    found = sorted(p for p in Path(h5_dir).glob(_timing_template().format(image="*")) if p.is_file())
    if len(found) <= 1:
        return found[0] if found else None
    named = Path(h5_dir) / timing_csv_name(image)
    if named in found:
        return named
    raise StoreError(
        f"{h5_dir}: {len(found)} timing CSVs ({', '.join(p.name for p in found)}); pick one with --timing"
    )
