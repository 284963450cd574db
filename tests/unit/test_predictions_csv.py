"""Per-sample prediction CSVs read back exactly, whatever class values the head was trained on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctfm.errors import DataError
from ctfm.evaluate.inference import (
    Predictions,
    align_to_labels,
    read_eval_meta,
    read_predictions,
    recorded_classes,
)


def _preds(classes: list[int]) -> Predictions:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, len(classes)))
    logits[np.arange(12), np.arange(12) % len(classes)] += 5.0  # every column is someone's argmax
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return Predictions(
        files=[f"c{i:02d}.nii.gz" for i in range(12)],
        labels=np.arange(12) % len(classes),
        logits=logits,
        probs=probs,
        classes=classes,
    )


@pytest.mark.parametrize("classes", [[0, 1], [1, 2], [0, 2, 5]])
def test_written_predictions_read_back_with_their_classes(tmp_path, classes):
    preds = _preds(classes)
    path = tmp_path / "val_per_sample_predictions.csv"
    preds.to_frame().to_csv(path, index=False)
    back = read_predictions(path)
    assert back.classes == classes
    np.testing.assert_array_equal(back.labels, preds.labels)
    np.testing.assert_allclose(back.probs, preds.probs)
    table = pd.DataFrame({"case": [f"c{i:02d}" for i in range(12)], "file": preds.files})
    table["label"] = np.asarray(classes)[preds.labels]
    aligned = align_to_labels(back, table, str(path))
    np.testing.assert_array_equal(aligned.labels, preds.labels)


def test_pred_values_that_contradict_the_columns_are_a_clear_error(tmp_path):
    frame = _preds([1, 2]).to_frame()
    frame.loc[0, "pred"] = 2 if frame.loc[0, "pred"] == 1 else 1
    path = tmp_path / "p.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"p\.csv: column prob_class_"):
        read_predictions(path)


@pytest.mark.parametrize(
    ("column", "value", "match"),
    [
        ("label", "x", "non-integer label, e.g. c00"),
        ("label", "", "non-integer label, e.g. c00"),
        ("pred", "1.5", "non-integer pred, e.g. c00"),
        ("prob_class_1", "abc", "non-numeric prob_class_0, prob_class_1, e.g. c00"),
        ("filename", "c01.nii.gz", "1 case\\(s\\) listed more than once"),
    ],
)
def test_bad_cells_are_one_error_naming_a_case(tmp_path, column, value, match):
    frame = _preds([0, 1]).to_frame().astype({column: object})
    frame.loc[0, column] = value
    path = tmp_path / "p.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=match):
        read_predictions(path)


def test_probabilities_that_are_not_a_distribution_are_refused(tmp_path):
    """Rows summing to 0.5 or 2 gave Brier and calibration numbers without meaning; now they are refused."""
    for name, scale in (("half", 0.5), ("double", 2.0)):
        frame = _preds([0, 1]).to_frame()
        frame[["prob_class_0", "prob_class_1"]] *= scale
        path = tmp_path / f"{name}.csv"
        frame.to_csv(path, index=False)
        what = "outside \\[0, 1\\]" if scale > 1 else f"do not sum to 1, e.g. c00.nii.gz \\({scale:g}\\)"
        with pytest.raises(DataError, match=what):
            read_predictions(path)


def test_a_head_that_predicted_one_class_reads_back_by_its_recorded_classes(tmp_path):
    """Classes {1, 2} and every pred 2: `pred` cannot tell which column is class 1, but ctfm eval's JSON
    beside the file records the classes, so the leaderboard reads its own output back."""
    preds = _preds([1, 2])
    preds.probs[:, 1] = np.maximum(preds.probs[:, 1], 0.6)
    preds.probs[:, 0] = 1.0 - preds.probs[:, 1]
    path = tmp_path / "test_per_sample_predictions.csv"
    preds.to_frame().to_csv(path, index=False)
    with pytest.raises(DataError, match="cannot be told apart"):
        read_predictions(path)
    (tmp_path / "test_eval.json").write_text('{"meta": {"classes": [1, 2]}}')
    back = read_predictions(path, recorded_classes(read_eval_meta(path)))
    assert back.classes == [1, 2]
    np.testing.assert_array_equal(back.labels, preds.labels)


def test_a_tie_names_no_column(tmp_path):
    """0.5 / 0.5 with pred 1 (a p >= 0.5 rule) is a valid row, not a contradiction."""
    frame = _preds([0, 1]).to_frame()
    frame.loc[0, ["prob_class_0", "prob_class_1"]] = 0.5
    frame.loc[0, "pred"] = 1
    path = tmp_path / "p.csv"
    frame.to_csv(path, index=False)
    assert read_predictions(path).classes == [0, 1]
