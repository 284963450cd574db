"""Score trained heads: rebuild each checkpoint, predict every case of a split, score it, write the files.

A case of the split without a usable embedding (absent from the store, failed, timed out) is never dropped:
it is scored as a failure by the reference rule (:func:`~ctfm.evaluate.results.failure_outputs`) and counted in
``n_missing_failed``. Metrics are computed from the logits as the reference computes them
(:func:`~ctfm.core.metrics.class_probabilities`). The files are :mod:`ctfm.evaluate.results`'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctfm.core.errors import DataError, StoreError
from ctfm.evaluate.bootstrap import bootstrap_metrics
from ctfm.evaluate.results import (
    EvalResult,
    Predictions,
    class_index,
    failure_outputs,
    resampling_name,
    result_dir,
    to_probs,
    write_outputs,
    write_reference_layout,
)
from ctfm.probe.layout import RunLayout
from ctfm.store import sanitize_name


def scored_result(
    preds: Predictions, n_boot: int, seed: int, stratified: bool, **identity: Any
) -> EvalResult:
    """``preds`` scored with bootstrap intervals, as an :class:`EvalResult` with ``identity`` (model, disease, ...)."""
    metrics = bootstrap_metrics(
        preds.labels,
        preds.scores,
        n_boot=n_boot,
        seed=seed,
        multilabel=preds.multilabel,
        stratified=stratified,
    )
    return EvalResult(
        n_cases=len(preds.files),
        failed_cases=len(preds.failed),
        metrics=metrics,
        failed=preds.failed,
        resampling=resampling_name(stratified),
        **identity,
    )


def reference_tags(meta: dict[str, Any], split_column: str = "split") -> dict[str, Any]:
    """The reference inference's tag values from a ctfm checkpoint's metadata: ``norm`` (raw, std, ...),
    ``betas`` (written as the reference writes its tuple), ``eps``, ``head_name`` (``clf_lr_...``) and
    ``fold`` (the fold of a ``fold<k>`` split column; empty for the ``split`` column)."""
    point = meta.get("grid_point") or {}
    norm = meta.get("norm")
    norm = norm.get("type") if isinstance(norm, dict) else norm
    betas = point.get("betas")
    fold = split_column.removeprefix("fold")
    return {
        "norm": norm or point.get("norm"),
        "betas": str(tuple(betas)) if betas is not None else None,
        "eps": point.get("eps"),
        "fold": int(fold) if split_column.startswith("fold") and fold.isdigit() else None,
        "head_name": point.get("name"),
    }


def _split_rows(table: pd.DataFrame, split: str, where: Path, column: str = "split") -> pd.DataFrame:
    """The cases of ``split``: test from the split column; train and val from the column the head was
    trained on (a fold column for cross-validated heads, whose val cases are another fold's train)."""
    column = "split" if split == "test" else column
    if column not in table.columns:
        raise DataError(f"{where}: no column {column!r}, which the head was trained on")
    rows = table[table[column] == split].reset_index(drop=True)  # read_labels normalised the values
    if rows.empty:
        raise DataError(
            f"{where}: no case in split {split!r}" + (f" of column {column!r}" if column != "split" else "")
        )
    return rows


def _predict_view(
    predictor: Any, view: Any, task: str, cases: list[str]
) -> tuple[list[str], np.ndarray | None]:
    """Logits for the cases with an ok embedding; returns (cases predicted, logits)."""
    ok = set(view.cases("ok")) if view.dir.exists() else set()
    usable = [c for c in cases if c in ok]
    if not usable:
        return [], None
    packed = view.packed()
    rows = [packed.index(c) for c in usable]
    if task == "lp":
        from ctfm.store import to_float32

        x: Any = to_float32(np.asarray(packed.X[rows]), packed.dtype)
        return usable, np.asarray(predictor.predict_logits(x))
    tokens = [packed.case_tokens(i) for i in rows]
    return usable, np.asarray(predictor.predict_logits(tokens))


def predict_checkpoint(
    checkpoint: Path, store_root: Path, labels_dir: Path, split: str, split_column: str = "split"
) -> tuple[Predictions, dict[str, Any]]:
    """Rebuild a head, predict every case of ``split``; missing embeddings become scored failures."""
    from ctfm.core.labels import labels_path, read_labels
    from ctfm.probe.checkpoint import load_predictor
    from ctfm.probe.data import labels_digest, training_cases
    from ctfm.store import Store

    predictor = load_predictor(checkpoint)
    meta = dict(predictor.meta)
    src = meta.get("store") or {}
    view = Store(Path(store_root)).view(src["model"], src["task"], src["view"])
    disease = meta["disease"]
    labels_file = labels_path(labels_dir, disease)
    all_labels = read_labels(labels_file, disease)
    trained_on = training_cases(all_labels)
    have = view.manifest_checksum(trained_on) if view.dir.exists() else "(empty)"
    if have != src.get("manifest_checksum"):
        raise StoreError(
            f"{checkpoint}: trained on store manifest {str(src.get('manifest_checksum'))[:12]} of "
            f"{src['model']}/{src['task']}/{src['view']}, but {store_root} has {have[:12]} for the cases "
            f"{labels_file} now lists as train/val (embeddings or splits changed since training); evaluate "
            "against the store and labels the head was trained on, or retrain it"
        )
    if "labels" in src and src["labels"] != labels_digest(all_labels):
        raise DataError(
            f"{checkpoint}: the train/val rows of {labels_file} (labels or folds) changed since this head was "
            "trained on them; evaluate against the labels it was trained on, or retrain it (`ctfm probe --force`)"
        )
    table = _split_rows(all_labels, split, labels_file, split_column)
    classes = [int(c) for c in meta["classes"]]
    labels = class_index(table["label"], classes, f"{disease} labels")
    cases = table["case"].tolist()
    done, logits_ok = _predict_view(predictor, view, src["task"], cases)
    n_classes = len(classes)
    logits, probs = failure_outputs(labels, n_classes, False)
    done_set = set(done)
    failed = [c for c in cases if c not in done_set]
    if logits_ok is not None:
        lg, pr = to_probs(logits_ok)
        pos = {c: i for i, c in enumerate(cases)}
        rows = [pos[c] for c in done]
        logits = logits.astype(float)
        logits[rows], probs[rows] = lg, pr
    preds = Predictions(
        files=cases,  # the reference's filename: the case name
        labels=labels,
        logits=logits,
        probs=probs,
        failed=failed,
        classes=classes,
    )
    return preds, meta


def evaluate_checkpoint(
    checkpoint: Path,
    store_root: Path,
    labels_dir: Path,
    split: str,
    out: Path,
    n_boot: int = 2000,
    seed: int = 0,
    tag: str = "",
    split_column: str = "split",
    stratified: bool = True,
    reference_root: Path | None = None,
) -> EvalResult:
    """Predict, score with bootstrap intervals, and write every file for one checkpoint (also in the
    reference's layout under ``reference_root`` when given)."""
    preds, meta = predict_checkpoint(checkpoint, store_root, labels_dir, split, split_column)
    src = meta.get("store") or {}
    strategy = str(meta.get("strategy", Path(checkpoint).stem))
    result = scored_result(
        preds,
        n_boot,
        seed,
        stratified,
        model=str(src.get("model", "")),
        task=str(src.get("task", meta.get("kind", "lp"))),
        disease=str(meta["disease"]),
        strategy=strategy,
        split=split,
        checkpoint=str(checkpoint),
        reference_checkpoint=RunLayout(checkpoint.parent.parent).reference_checkpoint(strategy),
        meta={k: v for k, v in meta.items() if k != "state_dict"},
        tag=tag,
        tags=reference_tags(meta, split_column),
    )
    out_dir = result_dir(out, sanitize_name(result.model), result.task, result.disease, result.strategy, tag)
    write_outputs(out_dir, split, preds, result)
    if reference_root is not None:
        write_reference_layout(reference_root, preds, result)
    return result
