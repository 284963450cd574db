"""Per-sample prediction CSVs read back exactly, whatever class values the head was trained on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctfm.errors import DataError
from ctfm.evaluate.inference import Predictions, align_to_labels, read_predictions


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
