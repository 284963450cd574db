"""Score a per-sample predictions file (for organizers who receive predictions rather than checkpoints)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ctfm.core.errors import DataError
from ctfm.core.nifti import case_id
from ctfm.evaluate.inference import scored_result
from ctfm.evaluate.results import (
    EvalResult,
    Predictions,
    class_index,
    failure_outputs,
    named_split,
    read_eval_meta,
    read_predictions,
    recorded_classes,
    write_outputs,
)


def evaluate_predictions(
    predictions: Path,
    out: Path,
    labels: Path | None = None,
    disease: str | None = None,
    split: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    model: str | None = None,
    task: str = "",
    stratified: bool = True,
) -> EvalResult:
    """Recompute every metric from a per-sample predictions file (for organizers who receive predictions).

    ``model`` names the entry for the leaderboard (default: the file's folder name); ``task`` (lp or eao)
    the board it is ranked on beside checkpoint-scored models.

    ``labels`` is a label CSV or the labels folder (then ``disease`` picks ``<disease>.csv``); its labels are
    the truth and every labelled case of the scored split counts: ``split``, else the split the file's name
    starts with (:func:`named_split`), else every labelled case. A case absent from the file or flagged
    ``missing`` is a failure. Without ``labels`` the file's rows are the set (flagged rows are failures; an
    absent case cannot be known).
    """
    from ctfm.core.labels import labels_path, read_labels

    predictions = Path(predictions)
    preds = read_predictions(predictions, _own_classes(predictions))
    scored = split or named_split(predictions)
    if labels is not None:
        labels = Path(labels)
        if labels.is_dir():
            if not disease:
                raise DataError(f"{labels}: is a folder; pass --disease to pick <disease>.csv")
            labels = labels_path(labels, disease)
        table = read_labels(labels, disease or labels.stem)
        if scored:
            _refuse_other_splits(preds, table, scored, predictions)
            table = table[table["split"] == scored].reset_index(drop=True)
        if table.empty:
            raise DataError(f"{labels}: no labelled case in split {scored!r}")
        preds = align_to_labels(preds, table, str(predictions))
    split_name = scored or "all"
    result = scored_result(
        preds,
        n_boot,
        seed,
        stratified,
        model=model or predictions.parent.name,
        task=task,
        disease=disease or (labels.stem if labels is not None else ""),
        strategy="predictions",
        split=split_name,
        checkpoint=str(predictions),
    )
    write_outputs(Path(out), split_name, preds, result)
    return result


def align_to_labels(preds: Predictions, table: pd.DataFrame, where: str) -> Predictions:
    """Re-order predictions to the label table's cases, taking labels from it; a case absent from the
    predictions or flagged ``missing`` there is a failure (the reference rule, on the table's label)."""
    if preds.multilabel:
        raise DataError(f"{where}: multilabel predictions carry their own label_<j> columns; omit --labels")
    pos = {case_id(f): i for i, f in enumerate(preds.files)}
    extra = sorted(set(pos) - set(table["case"]))
    if extra:
        raise DataError(f"{where}: {len(extra)} predicted case(s) not in the labels, e.g. {extra[:3]}")
    n_classes = preds.probs.shape[1]
    labels = class_index(table["label"], preds.classes or list(range(n_classes)), where)
    logits, probs = failure_outputs(labels, n_classes, False)
    logits = logits.astype(float)
    flagged = set(preds.failed)
    failed: list[str] = []
    for row, case in enumerate(table["case"]):
        if case in pos and case not in flagged:
            logits[row], probs[row] = preds.logits[pos[case]], preds.probs[pos[case]]
        else:
            failed.append(case)
    return Predictions(table["case"].tolist(), labels, logits, probs, failed, preds.classes)


def _refuse_other_splits(preds: Predictions, table: pd.DataFrame, split: str, where: Path) -> None:
    split_of = dict(zip(table["case"], table["split"], strict=True))
    other = sorted(c for c in map(case_id, preds.files) if split_of.get(c, split) != split)
    if other:
        raise DataError(
            f"{where}: {len(other)} predicted case(s) belong to another split than {split!r}, e.g. {other[:3]}; "
            "keep only that split's rows, or pick their split with --split"
        )


def _own_classes(pred_csv: Path) -> list[int] | None:
    """The recorded classes when ``pred_csv`` is an output of ``ctfm eval`` (its JSON beside it)."""
    try:
        return recorded_classes(read_eval_meta(pred_csv))
    except (DataError, AttributeError):  # any CSV: no JSON beside it, or not ours
        return None
