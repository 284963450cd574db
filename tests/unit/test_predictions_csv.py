"""Per-sample prediction CSVs: the reference's columns written and read back exactly; ctfm's earlier files
(class values in ``label`` / ``pred``) still read; rows flagged ``missing`` are failures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctfm.core.errors import DataError
from ctfm.evaluate.predictions import align_to_labels
from ctfm.evaluate.results import (
    FAIL_LOGIT,
    Predictions,
    read_eval_meta,
    read_predictions,
    recorded_classes,
)

REFERENCE_COLUMNS = ["filename", "label", "prediction", "missing"]


def _preds(classes: list[int], failed: tuple[str, ...] = ()) -> Predictions:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, len(classes)))
    logits[np.arange(12), np.arange(12) % len(classes)] += 5.0  # every column is someone's argmax
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return Predictions(
        files=[f"c{i:02d}" for i in range(12)],
        labels=np.arange(12) % len(classes),
        logits=logits,
        probs=probs,
        failed=list(failed),
        classes=classes,
    )


def _legacy_frame(classes: list[int]) -> pd.DataFrame:
    """A file as ctfm eval wrote it before the reference's columns: class values in label and pred."""
    preds = _preds(classes)
    frame = pd.DataFrame({"filename": [f"{f}.nii.gz" for f in preds.files]})
    frame["label"] = np.asarray(classes)[preds.labels]
    frame["pred"] = np.asarray(classes)[preds.probs.argmax(1)]
    for i in range(len(classes)):
        frame[f"logit_class_{i}"] = preds.logits[:, i]
    for i in range(len(classes)):
        frame[f"prob_class_{i}"] = preds.probs[:, i]
    return frame


def test_the_reference_columns_in_order_with_failures_last():
    preds = _preds([0, 1, 2], failed=("c01", "c05"))
    frame = preds.to_frame()
    c = [f"logit_class_{i}" for i in range(3)] + [f"prob_class_{i}" for i in range(3)]
    assert list(frame.columns) == REFERENCE_COLUMNS + c
    assert (
        frame["filename"].tolist()[-2:] == ["c01", "c05"] and frame["missing"].tolist() == [0] * 10 + [1] * 2
    )
    rows = [int(f[1:]) for f in frame["filename"]]
    np.testing.assert_array_equal(frame["prediction"], preds.logits.argmax(1)[rows])  # the arg-max logit


@pytest.mark.parametrize("classes", [[0, 1], [1, 2], [0, 2, 5]])
def test_written_predictions_read_back(tmp_path, classes):
    """label and prediction are class indices (the reference scorer compares them with the logit columns);
    the class values come from the JSON beside the file."""
    preds = _preds(classes)
    path = tmp_path / "val_per_sample_predictions.csv"
    preds.to_frame().to_csv(path, index=False)
    back = read_predictions(path)
    assert back.classes == list(range(len(classes)))
    np.testing.assert_array_equal(back.labels, preds.labels)
    np.testing.assert_allclose(back.probs, preds.probs)
    np.testing.assert_allclose(back.scores, preds.probs, rtol=1e-6)  # the (float32) softmax of the logits
    (tmp_path / "val_eval.json").write_text(f'{{"meta": {{"classes": {classes}}}}}')
    back = read_predictions(path, recorded_classes(read_eval_meta(path)))
    assert back.classes == classes
    table = pd.DataFrame({"case": preds.files, "label": np.asarray(classes)[preds.labels]})
    aligned = align_to_labels(back, table, str(path))
    np.testing.assert_array_equal(aligned.labels, preds.labels)
    assert aligned.failed == []


def test_rows_flagged_missing_are_failures_whatever_they_hold(tmp_path):
    """A row with missing = 1 is scored by the reference rule, even if it holds a right prediction; aligned
    to labels, it stays a failure."""
    frame = _preds([0, 1]).to_frame()
    frame.loc[0, "missing"] = 1  # c00: label 0, predicted 0 with confidence
    path = tmp_path / "p.csv"
    frame.to_csv(path, index=False)
    back = read_predictions(path)
    assert back.failed == ["c00"]
    np.testing.assert_array_equal(back.logits[0], [-FAIL_LOGIT, FAIL_LOGIT])
    np.testing.assert_array_equal(back.probs[0], [0.0, 1.0])
    table = pd.DataFrame({"case": [f"c{i:02d}" for i in range(13)], "label": [i % 2 for i in range(13)]})
    aligned = align_to_labels(back, table, str(path))
    assert aligned.failed == ["c00", "c12"]  # flagged, and absent from the file
    assert aligned.preds[0] == 1 and aligned.preds[12] == 1


def test_a_label_that_is_no_column_index_is_refused(tmp_path):
    frame = _preds([0, 1]).to_frame()
    frame.loc[3, "label"] = 2
    path = tmp_path / "p.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"label must be a class index 0\.\.1 .*not 2 \(e\.g\. c03\)"):
        read_predictions(path)


@pytest.mark.parametrize("classes", [[0, 1], [1, 2], [0, 2, 5]])
def test_earlier_ctfm_files_read_back_with_their_classes(tmp_path, classes):
    frame = _legacy_frame(classes)
    path = tmp_path / "val_per_sample_predictions.csv"
    frame.to_csv(path, index=False)
    back = read_predictions(path)
    assert back.classes == classes and back.failed == []
    np.testing.assert_array_equal(back.labels, np.arange(12) % len(classes))


def test_pred_values_that_contradict_the_columns_are_a_clear_error(tmp_path):
    frame = _legacy_frame([1, 2])
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
        ("missing", "2", "1 row\\(s\\) whose missing is not 0 or 1, e.g. c00"),
        ("missing", "yes", "whose missing is not 0 or 1, e.g. c00"),
        ("prob_class_1", "abc", "non-numeric prob_class_0, prob_class_1, e.g. c00"),
        ("filename", "c01", "1 case\\(s\\) listed more than once"),
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
        what = "outside \\[0, 1\\]" if scale > 1 else f"do not sum to 1, e.g. c00 \\({scale:g}\\)"
        with pytest.raises(DataError, match=what):
            read_predictions(path)


def test_an_earlier_head_that_predicted_one_class_reads_back_by_its_recorded_classes(tmp_path):
    """Classes {1, 2} and every pred 2: `pred` cannot tell which column is class 1, but ctfm eval's JSON
    beside the file records the classes, so the leaderboard reads its own output back."""
    frame = _legacy_frame([1, 2])
    frame["prob_class_1"] = np.maximum(frame["prob_class_1"], 0.6)
    frame["prob_class_0"] = 1.0 - frame["prob_class_1"]
    frame["pred"] = 2
    path = tmp_path / "test_per_sample_predictions.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="cannot be told apart"):
        read_predictions(path)
    (tmp_path / "test_eval.json").write_text('{"meta": {"classes": [1, 2]}}')
    back = read_predictions(path, recorded_classes(read_eval_meta(path)))
    assert back.classes == [1, 2]
    np.testing.assert_array_equal(back.labels, np.arange(12) % 2)


def test_a_tie_names_no_column(tmp_path):
    """0.5 / 0.5 with pred 1 (a p >= 0.5 rule) is a valid row, not a contradiction."""
    frame = _legacy_frame([0, 1])
    frame.loc[0, ["prob_class_0", "prob_class_1"]] = 0.5
    frame.loc[0, "pred"] = 1
    path = tmp_path / "p.csv"
    frame.to_csv(path, index=False)
    assert read_predictions(path).classes == [0, 1]


# A 3-class head on 12 test cases, the last two failures (logits +-10), and torchmetrics 1.9.0's AUROC of them
# (the reference's metric collection on the float32 logits).
TWELVE_LABELS = [1, 0, 2, 0, 0, 1, 1, 0, 1, 1, 0, 1]
TWELVE_LOGITS = [
    [11.983558654785156, 9.26083755493164, 7.836862087249756],
    [10.862070083618164, 8.241766929626465, 7.838888168334961],
    [11.650519371032715, 10.74310302734375, 5.920297145843506],
    [8.186324119567871, 11.489681243896484, 8.24166488647461],
    [8.653777122497559, 8.86630630493164, 5.397686958312988],
    [8.77163028717041, 9.76341438293457, 6.006641387939453],
    [8.531075477600098, 9.706253051757812, 5.310968399047852],
    [8.160809516906738, 9.396157264709473, 5.893136024475098],
    [10.418614387512207, 9.921381950378418, 8.09682846069336],
    [8.374471664428711, 9.930207252502441, 6.239319801330566],
    [-10.0, 10.0, -10.0],
    [-10.0, -10.0, 10.0],
]


def _saturated() -> tuple[np.ndarray, np.ndarray]:
    """200 binary cases with logits 40x apart: most probabilities saturate in float32."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    return y, ((rng.normal(size=(200, 2)) + 1.2 * np.eye(2)[y]) * 40).astype(np.float32)


def test_scores_are_the_reference_float32_softmax():
    """torchmetrics ranks float32 softmax probabilities: its ties (two failures' equal probabilities in a third
    column, saturated cases) decide AUROC and AP. ctfm scores the same bits; a float64 softmax would not."""
    from ctfm.core.metrics import class_probabilities, reference_metrics

    y, logits = np.array(TWELVE_LABELS), np.array(TWELVE_LOGITS)
    assert reference_metrics(y, class_probabilities(logits), 3)["auroc"] == pytest.approx(0.269986, abs=1e-6)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    assert reference_metrics(y, z / z.sum(axis=1, keepdims=True), 3)["auroc"] == pytest.approx(
        0.265224, abs=1e-6
    )
    y, logits = _saturated()
    got = reference_metrics(y, class_probabilities(logits), 2)
    assert (got["auroc"], got["ap"]) == (pytest.approx(0.897862, abs=1e-6), pytest.approx(0.861228, abs=1e-6))
    scores = Predictions([str(i) for i in range(200)], y, logits.astype(float), np.zeros((200, 2))).scores
    np.testing.assert_array_equal(scores, class_probabilities(logits))  # what eval and the leaderboard score
