"""Classification metrics in numpy, batched over a leading axis (bootstrap resamples, heads, models).

Every function accepts one set (``y [N]``) or a batch of sets (``y [B, N]``) and returns a float or an
array ``[B]``.

**The reference's metrics** (:data:`REFERENCE_METRICS`, :func:`reference_metrics`) carry the reference's names
and mean what the benchmark's reference scorer computes with torchmetrics: task "multiclass" with
``num_classes`` = the number of logit columns, binary tasks included, predictions the arg-max class. The rules
were read off torchmetrics 1.9 on crafted sets (``tests/unit/test_reference_metrics.py``):

* ``acc``: share of cases whose arg-max class is the label.
* ``f1`` / ``sensitivity`` / ``specificity``: per-class F1, recall and specificity (0 where a denominator is
  0), averaged over the classes present in the labels or the predictions (torchmetrics gives a class with
  TP + FP + FN = 0 weight 0), which is scikit-learn's macro average. Binary: both classes, so sensitivity =
  specificity = balanced accuracy.
* ``balanced_acc``: mean over all ``n_classes`` classes of ``(TP/(TP+FN+1e-8) + TN/(TN+FP+1e-8)) / 2``; a
  class absent from labels and predictions adds about 0.5. Binary: scikit-learn's balanced accuracy (to
  1e-8); 3+ classes: not scikit-learn's.
* ``auroc``: one-vs-rest AUROC of each class's probability column (ties count one half), plain mean over all
  classes; a class without positives or without negatives counts 0 (torchmetrics' zero ROC curve).
* ``ap``: step average precision of each class's column (one threshold per distinct score, as
  scikit-learn), mean over the classes with a positive; a class without positives is left out, except when
  every label is class 0, where it counts 0 (torchmetrics sets recall to 1 only then).

**ctfm's additions** (:data:`EXTRA_METRICS`, names the reference never uses):

* ``pos_sensitivity`` / ``pos_specificity`` / ``pos_ap`` (binary tasks; NaN otherwise): class 1's recall
  (``recall_score``), class 0's recall (``recall_score(pos_label=0)``) and class 1's average precision
  (``average_precision_score(y, p1)``), each NaN when the set has no case of the class it needs.
* ``brier``: mean squared error of the probabilities: the positive-class probability for binary
  (``brier_score_loss``), the sum over classes for multiclass (sklearn >= 1.7), the mean of the per-label
  binary scores for multilabel.
* ``ece``: top-label expected calibration error with ``n_bins`` (default 15) equal-width bins over [0, 1]:
  bin ``k`` holds confidences in ``(k/n, (k+1)/n]`` (confidence 0 goes to bin 0),
  ``ECE = sum_k (n_k / N) |accuracy_k - mean confidence_k|``. Binary is treated as two classes; multilabel
  averages the per-label binary ECE. sklearn has no ECE; the tests compare it with a plain loop.

**Multilabel targets** (a ctfm extension; the reference scorer has none): ``acc`` is subset accuracy; ``f1``,
``sensitivity``, ``specificity`` the unweighted means over labels of each label's binary score;
``balanced_acc`` the mean over labels of ``(recall + specificity) / 2`` with the same 1e-8 (the reference's
``MultiLabelBalancedAccuracy``); ``auroc`` and ``ap`` the means of the per-label values, NaN as soon as a label
lacks a class (scikit-learn refuses such sets); ``pos_*`` NaN.

The building blocks :func:`auroc` and :func:`average_precision` follow scikit-learn (AUROC is the rank
statistic with average ranks for ties; AP uses one threshold per distinct score) and return NaN where
scikit-learn raises or warns (no positive, or one class only) so that batched callers can count undefined sets.

Shapes: ``score`` with the shape of ``y`` is a binary score (or a multilabel score when
``multilabel=True``); ``score`` with one more trailing axis ``C`` holds class probabilities (``C == 2`` is
binary and uses column 1).

Example:
    >>> import numpy as np
    >>> auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    >>> auroc(np.array([[0, 0, 1, 1], [1, 1, 1, 1]]), np.array([[0.1, 0.4, 0.35, 0.8]] * 2)).tolist()
    [0.75, nan]
    >>> probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])  # predicts 0, 1, 1, 1
    >>> m = reference_metrics(np.array([0, 0, 1, 1]), probs, 2)
    >>> round(m["f1"], 4), m["sensitivity"], m["specificity"], round(m["balanced_acc"], 6)
    (0.7333, 0.75, 0.75, 0.75)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ECE_BINS = 15
REFERENCE_METRICS: tuple[str, ...] = (
    "acc",
    "f1",
    "auroc",
    "ap",
    "sensitivity",
    "specificity",
    "balanced_acc",
)
EXTRA_METRICS: tuple[str, ...] = ("pos_sensitivity", "pos_specificity", "pos_ap", "brier", "ece")
METRICS: tuple[str, ...] = REFERENCE_METRICS + EXTRA_METRICS
LOWER_IS_BETTER: frozenset[str] = frozenset({"brier", "ece"})
CONFUSION_METRICS: tuple[str, ...] = (
    "acc",
    "f1",
    "sensitivity",
    "specificity",
    "balanced_acc",
    "pos_sensitivity",
    "pos_specificity",
)
CLASS_SET_METRICS: frozenset[str] = frozenset(
    {"f1", "auroc", "ap", "sensitivity", "specificity", "balanced_acc"}
)
REFERENCE_EPS = 1e-8  # in the reference's balanced-accuracy denominators


def _batched(*arrays: np.ndarray, core_ndim: int) -> tuple[list[np.ndarray], bool]:
    """Add a leading batch axis to unbatched inputs; report whether the result must be squeezed."""
    arrays_ = [np.asarray(a) for a in arrays]
    single = arrays_[0].ndim == core_ndim
    if single:
        arrays_ = [a[None] for a in arrays_]
    return arrays_, single


def _out(values: np.ndarray, single: bool) -> float | np.ndarray:
    return float(values[0]) if single else values


# ----------------------------------------------------------------------------------------- predictions


def _counts(y: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, ...]:
    """Per-class TP, FP, FN, TN for batched integer labels ``[B, N]`` -> each ``[B, C]``."""
    b, n = y.shape
    codes = (y * n_classes + pred + (n_classes * n_classes) * np.arange(b)[:, None]).ravel()
    cm = np.bincount(codes, minlength=b * n_classes * n_classes).reshape(b, n_classes, n_classes)
    return counts_from_confusion(cm, n)


def counts_from_confusion(cm: np.ndarray, n: np.ndarray | int) -> tuple[np.ndarray, ...]:
    """Per-class TP, FP, FN, TN ``[..., C]`` from confusion matrices ``[..., C(true), C(pred)]``."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    fn = cm.sum(axis=-1) - tp
    fp = cm.sum(axis=-2) - tp
    tn = np.asarray(n)[..., None] - tp - fp - fn
    return tp, fp, fn, tn


def _ml_counts(y: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-label TP, FP, FN, TN for batched multilabel indicators ``[B, N, L]`` -> each ``[B, L]``."""
    yt = y.astype(bool)
    yp = pred.astype(bool)
    tp = np.sum(yt & yp, axis=1)
    fp = np.sum(~yt & yp, axis=1)
    fn = np.sum(yt & ~yp, axis=1)
    tn = y.shape[1] - tp - fp - fn
    return tp, fp, fn, tn


def _n_classes(y: np.ndarray, pred: np.ndarray, n_classes: int | None) -> int:
    return int(n_classes) if n_classes else int(max(y.max(initial=0), pred.max(initial=0))) + 1


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's and torchmetrics' zero_division)."""
    return np.divide(num, den, out=np.zeros(num.shape, dtype=float), where=den > 0)


def _macro(per_class: np.ndarray, present: np.ndarray) -> np.ndarray:
    return np.sum(np.where(present, per_class, 0.0), axis=-1) / np.maximum(present.sum(axis=-1), 1)


def _class_recall(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """One class's recall ``[...]`` from its counts; NaN without a case of that class."""
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def confusion_metric(name: str, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    """A :data:`CONFUSION_METRICS` value from per-class counts ``[..., C]`` (single-label sets, module docstring).

    Counts may be weighted (bootstrap resamples): the direct functions and the resampling path share this one
    formula.
    """
    if name == "acc":
        return tp.sum(axis=-1) / (tp + fn).sum(axis=-1)
    if name == "balanced_acc":
        return ((tp / (tp + fn + REFERENCE_EPS) + tn / (tn + fp + REFERENCE_EPS)) / 2.0).mean(axis=-1)
    if name in ("pos_sensitivity", "pos_specificity"):
        if tp.shape[-1] != 2:
            return np.full(tp.shape[:-1], np.nan)
        if name == "pos_sensitivity":
            return _class_recall(tp[..., 1], tp[..., 1] + fn[..., 1])
        return _class_recall(tp[..., 0], tp[..., 0] + fn[..., 0])
    seen = (tp + fp + fn) > 0  # the classes in the labels or the predictions
    if name == "f1":
        return _macro(_ratio(2 * tp, 2 * tp + fp + fn), seen)
    if name == "sensitivity":
        return _macro(_ratio(tp, tp + fn), seen)
    if name == "specificity":
        return _macro(_ratio(tn, tn + fp), seen)
    raise ValueError(f"{name!r} is not a confusion-count metric")


def _multilabel_confusion(
    name: str, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray
) -> np.ndarray:
    """Per-label binary scores ``[..., L]`` averaged over labels (module docstring, multilabel targets)."""
    if name == "balanced_acc":
        return confusion_metric(name, tp, fp, fn, tn)
    if name in ("pos_sensitivity", "pos_specificity"):
        return np.full(tp.shape[:-1], np.nan)
    per_label = {
        "f1": lambda: _ratio(2 * tp, 2 * tp + fp + fn),
        "sensitivity": lambda: _ratio(tp, tp + fn),
        "specificity": lambda: _ratio(tn, tn + fp),
    }[name]()
    return per_label.mean(axis=-1)


def _thresholded(
    name: str, y: np.ndarray, pred: np.ndarray, n_classes: int | None, multilabel: bool
) -> float | np.ndarray:
    (y, pred), single = _batched(y, pred, core_ndim=2 if multilabel else 1)
    if multilabel:
        return _out(_multilabel_confusion(name, *_ml_counts(y, pred)), single)
    return _out(confusion_metric(name, *_counts(y, pred, _n_classes(y, pred, n_classes))), single)


def accuracy(y: np.ndarray, pred: np.ndarray, multilabel: bool = False) -> float | np.ndarray:
    """Share of cases predicted exactly right (all labels right for multilabel)."""
    (y, pred), single = _batched(y, pred, core_ndim=2 if multilabel else 1)
    hit = y == pred
    if multilabel:
        hit = hit.all(axis=-1)
    return _out(hit.mean(axis=1), single)


def macro_f1(
    y: np.ndarray, pred: np.ndarray, n_classes: int | None = None, multilabel: bool = False
) -> float | np.ndarray:
    """Macro F1 = 2TP / (2TP + FP + FN) over the classes in the labels or predictions (``f1``)."""
    return _thresholded("f1", y, pred, n_classes, multilabel)


def sensitivity(
    y: np.ndarray, pred: np.ndarray, n_classes: int | None = None, multilabel: bool = False
) -> float | np.ndarray:
    """Macro recall TP / (TP + FN) (``recall_score(average="macro")``, the reference's ``sensitivity``)."""
    return _thresholded("sensitivity", y, pred, n_classes, multilabel)


def specificity(
    y: np.ndarray, pred: np.ndarray, n_classes: int | None = None, multilabel: bool = False
) -> float | np.ndarray:
    """Macro specificity TN / (TN + FP) over the same classes as :func:`sensitivity`."""
    return _thresholded("specificity", y, pred, n_classes, multilabel)


# ----------------------------------------------------------------------------------------------- scores


def _tie_groups(score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort each row; return the sort order and, per sorted position, the first and last index of its tie group."""
    order = np.argsort(score, axis=1, kind="stable")
    s = np.take_along_axis(score, order, axis=1)
    n = s.shape[1]
    pos = np.broadcast_to(np.arange(n), s.shape)
    new = np.ones(s.shape, dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    first = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    end = np.ones(s.shape, dtype=bool)
    end[:, :-1] = new[:, 1:]
    last = np.minimum.accumulate(np.where(end, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]
    return order, first, last


def _binary_auroc(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC with average ranks for ties, per row of ``[B, N]``; NaN without both classes."""
    order, first, last = _tie_groups(score.astype(float))
    ys = np.take_along_axis(y, order, axis=1).astype(bool)
    ranks = (first + last) / 2.0 + 1.0
    n_pos = ys.sum(axis=1).astype(float)
    n_neg = ys.shape[1] - n_pos
    u = np.where(ys, ranks, 0.0).sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def _binary_ap(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """sklearn's average precision per row of ``[B, N]``; NaN without a positive."""
    order, first, _ = _tie_groups(score.astype(float))
    ys = np.take_along_axis(y, order, axis=1).astype(float)
    n = ys.shape[1]
    n_pos = ys.sum(axis=1)
    below = np.concatenate([np.zeros((ys.shape[0], 1)), np.cumsum(ys, axis=1)], axis=1)
    # Threshold at a case's score: every case with score >= it is predicted positive.
    tps = n_pos[:, None] - np.take_along_axis(below, first, axis=1)
    precision = tps / (n - first)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, (ys * precision).sum(axis=1) / n_pos, np.nan)


def _score_task(
    y: np.ndarray, score: np.ndarray, multilabel: bool
) -> tuple[np.ndarray, np.ndarray, bool, bool]:
    """Normalise to batched ``y``, ``score`` and tell whether the scores are per-class columns.

    Returns ``(y [B, N] or [B, N, L], score [B, N] or [B, N, C], columns, single)``.
    """
    y = np.asarray(y)
    score = np.asarray(score, dtype=float)
    if multilabel:
        (y, score), single = _batched(y, score, core_ndim=2)
        return y, score, True, single
    single = y.ndim == 1
    if single:
        y, score = y[None], score[None]
    if score.shape == y.shape:
        return y, score, False, single
    if score.shape[:-1] != y.shape:
        raise ValueError(f"score shape {score.shape} does not fit labels {y.shape}")
    if score.shape[-1] == 2:
        return y, score[..., 1], False, single
    return y, score, True, single


def _score_metric(
    binary: Callable[[np.ndarray, np.ndarray], np.ndarray], y: np.ndarray, score: np.ndarray, multilabel: bool
) -> float | np.ndarray:
    y, score, columns, single = _score_task(y, score, multilabel)
    if not columns:
        return _out(binary(y, score), single)
    n_cols = score.shape[-1]
    targets = [(y[..., c] if multilabel else y == c) for c in range(n_cols)]
    per_class = np.stack([binary(t.astype(int), score[..., c]) for c, t in enumerate(targets)], axis=-1)
    # Plain mean: one undefined class makes the macro value undefined, as sklearn refuses such sets.
    return _out(per_class.mean(axis=-1), single)


def auroc(y: np.ndarray, score: np.ndarray, multilabel: bool = False) -> float | np.ndarray:
    """Area under the ROC curve (binary; one-vs-rest macro for multiclass; macro over labels)."""
    return _score_metric(_binary_auroc, y, score, multilabel)


def average_precision(y: np.ndarray, score: np.ndarray, multilabel: bool = False) -> float | np.ndarray:
    """Average precision, sklearn's step definition (binary; one-vs-rest macro; macro over labels)."""
    return _score_metric(_binary_ap, y, score, multilabel)


def brier(y: np.ndarray, prob: np.ndarray, multilabel: bool = False) -> float | np.ndarray:
    """Brier score: squared error of the probabilities (see the module docstring for each task)."""
    y, prob, columns, single = _score_task(y, prob, multilabel)
    if multilabel:
        return _out(((prob - y) ** 2).mean(axis=(1, 2)), single)
    if not columns:
        return _out(((prob - y) ** 2).mean(axis=1), single)
    onehot = y[..., None] == np.arange(prob.shape[-1])
    return _out(((prob - onehot) ** 2).sum(axis=-1).mean(axis=1), single)


def _top_label_ece(correct: np.ndarray, conf: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE per row from top-label correctness and confidence ``[B, N]``."""
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    b, n = conf.shape
    flat = (bins + n_bins * np.arange(b)[:, None]).ravel()
    size = b * n_bins
    gap = np.bincount(flat, weights=(correct - conf).ravel(), minlength=size).reshape(b, n_bins)
    return np.abs(gap).sum(axis=1) / n


def ece(
    y: np.ndarray, prob: np.ndarray, n_bins: int = ECE_BINS, multilabel: bool = False
) -> float | np.ndarray:
    """Top-label expected calibration error with ``n_bins`` equal-width bins (binary = two classes)."""
    prob_in = prob
    two_columns = not multilabel and np.ndim(prob) == np.ndim(y) + 1 and np.shape(prob)[-1] == 2
    y, prob, columns, single = _score_task(y, prob, multilabel)
    if two_columns:  # use the given columns: 1 - p can differ from them by one ulp at a bin edge
        prob = np.asarray(prob_in, dtype=float).reshape(*y.shape, 2)
        columns = True
    if multilabel:
        b, n, n_labels = prob.shape
        flat_y = np.moveaxis(y, 2, 1).reshape(b * n_labels, n)
        flat_p = np.moveaxis(prob, 2, 1).reshape(b * n_labels, n)
        per_label = ece(flat_y, flat_p, n_bins=n_bins).reshape(b, n_labels)
        return _out(per_label.mean(axis=1), single)
    if not columns:
        prob = np.stack([1.0 - prob, prob], axis=-1)
    pred = prob.argmax(axis=-1)
    conf = prob.max(axis=-1)
    return _out(_top_label_ece((pred == y).astype(float), conf, n_bins), single)


# ------------------------------------------------------------------------------------------- reference


def reference_rank_macro(
    auc: np.ndarray, ap: np.ndarray, n_pos: np.ndarray, n_neg: np.ndarray, all_class0: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The reference's macro AUROC and AP from per-class one-vs-rest values ``[..., C]`` (NaN where
    undefined), each class's positive and negative counts ``[..., C]`` and whether every label is class 0
    ``[...]``."""
    auc = np.where((n_pos > 0) & (n_neg > 0), auc, 0.0).mean(axis=-1)
    fill = np.where(np.asarray(all_class0)[..., None], 0.0, np.nan)
    ap = np.where(n_pos > 0, ap, fill)
    counted = ~np.isnan(ap)
    with np.errstate(invalid="ignore"):
        ap = np.where(counted, ap, 0.0).sum(axis=-1) / counted.sum(axis=-1)
    return auc, ap


def reference_metrics(y: np.ndarray, probs: np.ndarray, n_classes: int) -> dict[str, float | np.ndarray]:
    """The reference scorer's seven metrics (:data:`REFERENCE_METRICS`) of labels ``y [N]`` (class indices)
    and class probabilities ``probs [N, n_classes]``, or batched ``y [B, N]``, ``probs [B, N, n_classes]``
    (then every value is an array ``[B]``). Predictions are the arg-max class (first on ties)."""
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=float)
    if probs.shape != (*y.shape, n_classes):
        raise ValueError(f"probabilities {probs.shape} do not fit labels {y.shape} and {n_classes} classes")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must be class indices 0..{n_classes - 1}")
    (y, probs), single = _batched(y, probs, core_ndim=1)
    counts = _counts(y, probs.argmax(axis=-1), n_classes)
    out = {k: confusion_metric(k, *counts) for k in REFERENCE_METRICS if k not in ("auroc", "ap")}
    targets = [(y == c).astype(int) for c in range(n_classes)]
    auc = np.stack([_binary_auroc(t, probs[..., c]) for c, t in enumerate(targets)], axis=-1)
    ap = np.stack([_binary_ap(t, probs[..., c]) for c, t in enumerate(targets)], axis=-1)
    n_pos = np.stack([t.sum(axis=1) for t in targets], axis=-1)
    out["auroc"], out["ap"] = reference_rank_macro(auc, ap, n_pos, y.shape[1] - n_pos, (y == 0).all(axis=1))
    return {k: _out(out[k], single) for k in REFERENCE_METRICS}


# ------------------------------------------------------------------------------------------------- all


def class_probabilities(logits: np.ndarray) -> np.ndarray:
    """Class probabilities ``[..., C]`` from logits ``[..., C]``, exactly as the reference makes them: torch's
    softmax of float32 logits (its inference writes these as ``prob_class_<i>``; torchmetrics scores them).
    The exact bits decide ties (saturated cases at 1 - k ulp, two failures' ``+-10`` logits), which move
    AUROC and AP, so every probability ctfm writes or scores comes from here (returned as float64)."""
    import torch

    with torch.no_grad():
        probs = torch.softmax(torch.as_tensor(np.asarray(logits, dtype=np.float32)), dim=-1)
    return probs.numpy().astype(np.float64)


def predict(prob: np.ndarray, multilabel: bool = False) -> np.ndarray:
    """Hard predictions: arg-max class (first on ties), or probability >= 0.5 per label for multilabel."""
    prob = np.asarray(prob, dtype=float)
    if multilabel:
        return (prob >= 0.5).astype(int)
    return prob.argmax(axis=-1)


def _pos_ap(y: np.ndarray, prob: np.ndarray) -> float | np.ndarray:
    """Class 1's average precision of binary sets; NaN for other tasks."""
    if prob.shape[-1] == 2:
        return average_precision(y, prob[..., 1])
    return np.full(y.shape[:-1], np.nan) if y.ndim > 1 else float("nan")


def compute_all(
    y: np.ndarray,
    prob: np.ndarray,
    multilabel: bool = False,
    n_bins: int = ECE_BINS,
    names: tuple[str, ...] | list[str] | None = None,
) -> dict[str, float | np.ndarray]:
    """Every metric of :data:`METRICS` (or only ``names``) from labels and class probabilities.

    Binary and multiclass take integer labels ``[..., N]`` and probabilities with one column per class
    (binary: 2 columns); multilabel takes indicators ``[..., N, L]`` and per-label probabilities ``[..., N, L]``.
    """
    names = tuple(names or METRICS)
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
    y = np.asarray(y)
    prob = np.asarray(prob, dtype=float)
    pred = predict(prob, multilabel)
    funcs: dict[str, Callable[[], float | np.ndarray]] = {
        "brier": lambda: brier(y, prob, multilabel),
        "ece": lambda: ece(y, prob, n_bins, multilabel),
    }
    if multilabel:
        nan = np.full(y.shape[:-2], np.nan) if y.ndim > 2 else float("nan")
        funcs |= {
            "acc": lambda: accuracy(y, pred, multilabel=True),
            "auroc": lambda: auroc(y, prob, multilabel=True),
            "ap": lambda: average_precision(y, prob, multilabel=True),
            "pos_ap": lambda: nan,
        }
        funcs |= {
            k: (lambda k=k: _thresholded(k, y, pred, None, True)) for k in CONFUSION_METRICS if k != "acc"
        }
    else:
        flat_y, flat_p = y.reshape(-1, y.shape[-1]), prob.reshape(-1, *prob.shape[-2:])
        ref = reference_metrics(flat_y, flat_p, prob.shape[-1]) if set(names) & set(REFERENCE_METRICS) else {}
        funcs |= {k: (lambda k=k: _shaped(ref[k], y)) for k in ref}
        counts = _counts(flat_y, flat_p.argmax(axis=-1), prob.shape[-1])
        funcs |= {
            k: (lambda k=k: _shaped(confusion_metric(k, *counts), y))
            for k in ("pos_sensitivity", "pos_specificity")
        }
        funcs["pos_ap"] = lambda: _pos_ap(y, prob)
    return {name: funcs[name]() for name in names}


def _shaped(values: np.ndarray, y: np.ndarray) -> float | np.ndarray:
    """Values of flattened sets back in the batch shape of ``y [..., N]`` (a float for one set)."""
    return float(values[0]) if y.ndim == 1 else np.asarray(values).reshape(y.shape[:-1])
