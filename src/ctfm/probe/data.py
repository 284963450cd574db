"""Labels + embedding store -> arrays for probing: view choice, splits and folds, few-shot draws, missing cases.

A case of the label CSV's train/val split without an ``ok`` embedding cannot be trained on; it is never
dropped silently: :class:`DiseaseData` lists it (with its store status) so the CLI and ``summary.json`` say
how many and which.

Example:
    >>> data = load_disease(Path("store"), "my-model", Path("bench/labels"), "fatty_liver")  # doctest: +SKIP
    >>> split = data.split("split")  # doctest: +SKIP
    >>> x_tr, y_tr = data.arrays(split.train)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import DataError, StoreError
from ctfm.core.hashing import digest
from ctfm.core.labels import labels_path, read_labels

TRAIN, VAL = "train", "val"


@dataclass
class Split:
    """Row indices (into :attr:`DiseaseData.table`) of one train/val selection."""

    column: str
    train: np.ndarray
    val: np.ndarray


@dataclass
class DiseaseData:
    """One disease's labelled cases that have an embedding, and the ones that do not.

    ``table`` has the label columns plus ``row`` (the case's row in ``x``). ``missing`` maps each case of the
    CSV (any split) without an ok embedding to its store status (``absent``, ``failed: <error>``, ...).
    """

    disease: str
    table: pd.DataFrame
    x: np.ndarray
    missing: dict[str, str] = field(default_factory=dict)
    missing_split: dict[str, str] = field(default_factory=dict)
    store_key: dict[str, str] = field(default_factory=dict)
    labels_file: Path | None = None  # named in errors about the labels (set by load_disease)
    # eao (added by the EAO helper): the store's PackedEAO; ``x`` is then its token memmap [sum n_i, D],
    # never loaded whole, and ``row`` indexes cases of ``packed``.
    packed: Any = field(default=None, repr=False)

    @property
    def feature_dim(self) -> int:
        return int(self.x.shape[1])

    def missing_in(self, splits: tuple[str, ...] = (TRAIN, VAL)) -> list[str]:
        """Sorted ids of the cases of these ``split``-column values that have no ok embedding."""
        return sorted(c for c, s in self.missing_split.items() if s in splits)

    def split(self, column: str = "split") -> Split:
        """Train/val rows by a column holding ``train``/``val`` (``split`` or ``fold<k>``)."""
        source = self.labels_file or f"{self.disease} labels"
        if column not in self.table.columns:
            folds = [c for c in self.table.columns if c.startswith("fold")]
            raise DataError(
                f"{source}: no column {column!r}"
                + (f"; fold columns: {', '.join(folds)}" if folds else "; it has no fold columns")
            )
        values = self.table[column].astype(str).str.strip().str.lower()
        allowed = load_benchmark().section("labels")["splits"]
        unknown = sorted(set(values) - {*allowed, ""})  # a blank fold cell: the case is in neither
        if unknown:  # a typo would silently drop its cases from training or validation
            raise DataError(f"{source}: unknown {column} value(s) {unknown}; allowed: {', '.join(allowed)}")
        train = np.flatnonzero(values.to_numpy() == TRAIN)
        val = np.flatnonzero(values.to_numpy() == VAL)
        for name, rows in ((TRAIN, train), (VAL, val)):
            if len(rows) == 0:
                raise DataError(
                    f"{source}: no case with an embedding has {column}={name}; "
                    f"values found: {sorted(set(values))}"
                )
            classes = np.unique(self.table["label"].to_numpy()[rows])
            if len(classes) < 2:
                raise DataError(
                    f"{source}: the {name} cases of column {column!r} all have class {classes.tolist()}; "
                    "a probe needs at least two classes in train and in val"
                )
        labels = self.table["label"].to_numpy()
        unseen = sorted(set(labels[val].tolist()) - set(labels[train].tolist()))
        if unseen:
            raise DataError(
                f"{source}: class(es) {unseen} of the {VAL} cases of column {column!r} never appear in "
                f"{TRAIN}: a probe cannot learn them"
            )
        return Split(column, train, val)

    def arrays(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features ``[n, D]`` (float32) and labels ``[n]`` of these table rows."""
        sub = self.table.iloc[rows]
        return np.asarray(self.x[sub["row"].to_numpy()], dtype=np.float32), sub["label"].to_numpy()

    def cases(self, rows: np.ndarray) -> list[str]:
        return self.table["case"].iloc[rows].tolist()


def fold_columns(n_folds: int) -> list[str]:
    """The ``fold<k>`` columns of the 5-fold mode, as configured."""
    known = load_benchmark().section("labels")["fold_columns"]
    if not 1 <= n_folds <= len(known):
        raise DataError(f"--folds must be between 1 and {len(known)}")
    return list(known[:n_folds])


def few_shot(y: np.ndarray, shots: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of ``shots`` examples per class drawn without replacement (sorted)."""
    picked = []
    for c in np.unique(y):
        pool = np.flatnonzero(y == c)
        if len(pool) < shots:
            raise DataError(f"--shots {shots}: class {int(c)} has only {len(pool)} train case(s)")
        picked.append(rng.choice(pool, size=shots, replace=False))
    return np.sort(np.concatenate(picked))


def match_embeddings(
    disease: str,
    table: pd.DataFrame,
    cases: list[str],
    statuses: dict[str, str],
    x: np.ndarray,
    store_key: dict[str, str] | None = None,
) -> DiseaseData:
    """Join a label table with embedding rows (``cases[i]`` is row ``i`` of ``x``); record the rest as missing."""
    rows = {c: i for i, c in enumerate(cases)}
    present = table["case"].isin(rows)
    missing_table = table.loc[~present]
    kept = table.loc[present].reset_index(drop=True).copy()
    kept["row"] = kept["case"].map(rows).astype(np.int64)
    return DiseaseData(
        disease=disease,
        table=kept,
        x=x,
        missing={c: statuses.get(c, "absent") for c in missing_table["case"]},
        missing_split=dict(zip(missing_table["case"], missing_table["split"], strict=True)),
        store_key=store_key or {},
    )


def training_cases(table: pd.DataFrame) -> list[str]:
    """The cases a head may have seen (all but the held-out test split): what its store checksum covers."""
    return table.loc[table["split"] != "test", "case"].tolist()


def input_key(view: Any, table: pd.DataFrame) -> dict[str, str]:
    """What a disease's heads are trained from: the store view, its train/val records and the label rows
    they may have seen (a test label edited after training leaves the heads as they are). A finished probe
    whose key differs is stale (see ``probe.runner.changed_inputs``)."""
    cases = training_cases(table)
    return {
        "model": view.model,
        "task": view.task,
        "view": view.view,
        "manifest_checksum": view.manifest_checksum(cases),
        "labels": labels_digest(table),
    }


def labels_digest(table: pd.DataFrame) -> str:
    """Digest of the label rows a head may have seen (all but test, see :func:`training_cases`)."""
    return digest(table[table["case"].isin(training_cases(table))].to_csv(index=False))


def current_input_key(
    store_root: Path, model: str, labels_dir: Path, disease: str, task: str
) -> dict[str, str]:
    """:func:`input_key` as the store and labels are now, without packing anything (cheap)."""
    from ctfm.store import Store

    view = Store(Path(store_root)).view(model, task, load_benchmark().view_of(disease))
    return input_key(view, read_labels(labels_path(labels_dir, disease), disease))


def load_disease(
    store_root: Path, model: str, labels_dir: Path, disease: str, task: str = "lp", dtype: str = "float32"
) -> DiseaseData:
    """Read a disease's labels and its store view (``view_of(disease)``) packed into one array.

    For ``eao`` the packed token cache (of ``dtype``) stays memory-mapped: ``x`` is its token array and
    ``packed`` the :class:`~ctfm.store.PackedEAO` (read batch by batch by the trainer).
    """
    from ctfm.store import Store

    bench = load_benchmark()
    bench.check_disease(disease)
    view = Store(Path(store_root)).view(model, task, bench.view_of(disease))
    if not view.cases():
        raise StoreError(
            f"{view.dir}: no ok {task} embeddings for model {model!r} in view {view.view!r} "
            f"(needed by {disease}); run `ctfm extract` or `ctfm store import` first"
        )
    csv = labels_path(labels_dir, disease)
    table = read_labels(csv, disease)
    packed = view.packed(dtype)
    statuses = {
        case: rec.status + (f": {rec.error}" if rec.error else "") for case, rec in view.records().items()
    }
    key = input_key(view, table)
    x = packed.tokens if task == "eao" else packed.as_float32()
    data = match_embeddings(disease, table, list(packed.cases), statuses, x, key)
    data.labels_file = csv
    if task == "eao":
        data.packed = packed
    return data
