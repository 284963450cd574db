"""Reading ``labels/<target>.csv`` files: columns are found by name, never by position.

Example:
    >>> table = read_labels(Path("bench/labels/fatty_liver.csv"), "fatty_liver")  # doctest: +SKIP
    >>> table.columns.tolist()[:4]  # doctest: +SKIP
    ['case', 'file', 'split', 'label']
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import DataError
from ctfm.core.nifti import case_id

MAX_CLASS = 10_000  # class indices run from 0; a larger value (1e20, inf) is a broken file, not a class


def labels_path(labels_dir: Path, target: str) -> Path:
    """``<labels_dir>/<target>.csv``; a file given as the folder is named as such."""
    if Path(labels_dir).is_file():
        raise DataError(f"{labels_dir}: --labels takes the folder of <disease>.csv files, not one file")
    return Path(labels_dir) / f"{target}.csv"


def read_labels(path: Path, target: str | None = None) -> pd.DataFrame:
    """Normalise a label CSV to columns ``case, file, split, label`` plus any ``fold<k>`` columns.

    ``case`` is the file name without ``.nii.gz``; ``label`` is an integer class; rows are sorted by case.
    ``target`` defaults to the file's stem. Raises :class:`DataError` naming the file and the problem.
    """
    path = Path(path)
    target = target or path.stem
    conf = load_benchmark().section("labels")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{path}: label file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from exc
    raw.columns = [c.strip() for c in raw.columns]
    case_col = next(
        (c for c in (conf["case_column"], *conf["case_column_aliases"]) if c in raw.columns), None
    )
    missing = [
        name
        for name, present in (
            (conf["case_column"], case_col is not None),
            (conf["split_column"], conf["split_column"] in raw.columns),
            (target, target in raw.columns),
        )
        if not present
    ]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(raw.columns)}")
    splits = raw[conf["split_column"]].str.strip().str.lower()
    unknown = sorted(set(splits) - set(conf["splits"]))
    if unknown:
        raise DataError(f"{path}: unknown split value(s) {unknown}; allowed: {', '.join(conf['splits'])}")
    labels = pd.to_numeric(raw[target].str.strip(), errors="coerce")
    bad = raw.loc[~labels.between(0, MAX_CLASS) | (labels != labels.round()), case_col].tolist()  # NaN too
    if bad:
        raise DataError(
            f"{path}: non-integer or out-of-range {target} label for {len(bad)} case(s) (class indices are "
            f"whole numbers 0..{MAX_CLASS}), e.g. {bad[:3]}"
        )
    files = raw[case_col].str.strip()
    table = pd.DataFrame(
        {
            "case": [case_id(f) for f in files],
            "file": [f if f.endswith((".nii.gz", ".nii")) else f + ".nii.gz" for f in files],
            "split": splits,
            "label": labels.astype(int),
        }
    )
    dupes = table.loc[table["case"].duplicated(), "case"].tolist()
    if dupes:
        raise DataError(f"{path}: duplicated case(s) {dupes[:3]}")
    for fold in conf["fold_columns"]:
        if fold in raw.columns:
            table[fold] = raw[fold].str.strip().str.lower()
    # sorted by case: the same cases in another row order train and score the same (sampling and bootstrap
    # draw by row position)
    return table.sort_values("case", kind="stable", ignore_index=True)
