"""The eval results format: the one module that writes and reads ``ctfm eval``'s files.

Output per scored head, in ``<out>/<model>/<task>/<disease>/[<tag>/]<strategy>/`` (:func:`result_dir`):
``<split>_per_sample_predictions.csv`` (exactly the reference's columns ``filename, label, prediction,
missing, logit_class_<i>, prob_class_<i>``; ``label`` and ``prediction`` are class indices, the class values
are in the JSON), ``<split>_metrics.csv`` (the reference's metric and tag columns, then ctfm's: identity,
the additions of :data:`~ctfm.core.metrics.EXTRA_METRICS` and every metric's 95 % interval),
``<split>_eval.json`` (everything, including checkpoint metadata and the failed case names),
``<split>_roc.png`` and ``<split>_pr.png``. ``<out>/<split>_summary.csv`` has one row per head
(:func:`write_summary`). With a reference root, :func:`write_reference_layout` also lays the files out as the
reference's scorer and organizer scripts read them:
``<root>/<model>/<disease>/results/<split>_per_sample_predictions_<strategy>.csv`` and
``<split>_metrics_<strategy>.csv``, as the reference inference names them.

A case without a usable embedding is a failure by the reference rule (:func:`failure_outputs`): a confident
prediction of a wrong class (class ``(label + 1) mod C``: logits ``+FAIL_LOGIT`` there and ``-FAIL_LOGIT``
elsewhere, probability 1 there in the file), written last with ``missing = 1``. :func:`read_predictions`
reads the reference's files, ctfm's earlier ones and multilabel ones back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctfm.core.errors import DataError
from ctfm.core.fsutil import write_text_atomic
from ctfm.core.metrics import METRICS, REFERENCE_METRICS, class_probabilities, predict
from ctfm.core.nifti import case_id
from ctfm.evaluate.bootstrap import Interval
from ctfm.evaluate.checkpoints import Checkpoints
from ctfm.evaluate.curves import save_roc_pr
from ctfm.evaluate.splits import split_note
from ctfm.store import sanitize_name

FAIL_LOGIT = 10.0  # the reference's failure logits
RESULT_FORMAT = 3  # of the files written here; 2: the reference's columns and metric definitions; 3: its
# float32 softmax in prob_class_<i>, and <split>_summary.csv from ctfm run too
PRED_SUFFIX = "_per_sample_predictions.csv"
METRICS_SUFFIX = "_metrics.csv"
JSON_SUFFIX = "_eval.json"
ROC_SUFFIX, PR_SUFFIX = "_roc.png", "_pr.png"
RESULT_SUFFIXES = (PRED_SUFFIX, METRICS_SUFFIX, JSON_SUFFIX, ROC_SUFFIX, PR_SUFFIX)  # one result's files


@dataclass
class Predictions:
    """Per-case outputs of one head on one split, in the reference per-sample format.

    ``files`` are the reference's ``filename`` values (case names); ``labels`` is ``[N]`` (class index into
    ``classes``) or ``[N, L]`` (multilabel); ``probs`` are the probabilities as written (a failure's are
    one-hot); ``failed`` names the cases scored as failures.
    """

    files: list[str]
    labels: np.ndarray
    logits: np.ndarray
    probs: np.ndarray
    failed: list[str] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    multilabel: bool = False

    @property
    def missing(self) -> np.ndarray:
        """``[N]`` bool: the failures."""
        failed = set(self.failed)
        return np.array([case_id(f) in failed for f in self.files], dtype=bool)

    @property
    def scores(self) -> np.ndarray:
        """The probabilities the metrics use: :func:`~ctfm.core.metrics.class_probabilities` of the logits, as the reference scores its
        logits (per-label probabilities for multilabel targets)."""
        return self.probs if self.multilabel else class_probabilities(self.logits)

    @property
    def preds(self) -> np.ndarray:
        """The reference's ``prediction``: the arg-max logit (per label: probability >= 0.5)."""
        return predict(self.probs, True) if self.multilabel else self.logits.argmax(axis=-1)

    def to_frame(self) -> pd.DataFrame:
        """The reference's per-sample table, failures last (in the order they came)."""
        cols: dict[str, Any] = {"filename": self.files}
        if self.multilabel:
            cols |= {f"label_{j}": self.labels[:, j] for j in range(self.labels.shape[1])}
            cols |= {f"pred_{j}": self.preds[:, j] for j in range(self.labels.shape[1])}
        else:
            cols |= {"label": self.labels, "prediction": self.preds}
        missing = self.missing
        cols["missing"] = missing.astype(int)
        cols |= {f"logit_class_{i}": self.logits[:, i] for i in range(self.logits.shape[1])}
        cols |= {f"prob_class_{i}": self.probs[:, i] for i in range(self.probs.shape[1])}
        order = np.argsort(missing, kind="stable")
        return pd.DataFrame(cols).iloc[order].reset_index(drop=True)


@dataclass
class EvalResult:
    """Metrics with intervals for one head on one split."""

    model: str
    task: str
    disease: str
    strategy: str
    split: str
    n_cases: int
    failed_cases: int
    metrics: dict[str, Interval]
    failed: list[str] = field(default_factory=list)
    checkpoint: str = ""
    reference_checkpoint: str = ""  # the reference-format file of the same head, the reference's tag names it
    meta: dict[str, Any] = field(default_factory=dict)
    tag: str = ""  # probe run tag (fold, seed, few-shot try); "" for a single run
    tags: dict[str, Any] = field(default_factory=dict)  # the reference's norm, betas, eps, fold, head_name
    resampling: str = "stratified"

    def reference_row(self) -> dict[str, Any]:
        """The reference inference's ``<split>_metrics_<strategy>.csv`` row: its metrics and tag columns."""
        out: dict[str, Any] = {k: self.metrics[k].value for k in REFERENCE_METRICS}
        out |= {
            "strategy": self.strategy,
            "norm": self.tags.get("norm"),
            "betas": self.tags.get("betas"),
            "eps": self.tags.get("eps"),
            "fold": self.tags.get("fold"),
            "checkpoint": self.reference_checkpoint or Path(self.checkpoint).name,
            "head_name": self.tags.get("head_name"),
            "n_real": self.n_cases - self.failed_cases,
            "n_missing_failed": self.failed_cases,
        }
        return out

    def row(self) -> dict[str, Any]:
        """The reference row, then ctfm's columns: identity, the additions, every metric's interval."""
        out = self.reference_row()
        out |= {
            "model": self.model,
            "task": self.task,
            "disease": self.disease,
            "tag": self.tag,
            "split": self.split,
            "split_note": split_note(self.split),
            "resampling": self.resampling,
        }
        out |= {k: self.metrics[k].value for k in METRICS if k not in REFERENCE_METRICS}
        for key in METRICS:
            ci = self.metrics[key]
            out[f"{key}_ci_low"] = ci.low
            out[f"{key}_ci_high"] = ci.high
            out[f"{key}_degenerate"] = ci.degenerate
        return out

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["metrics"] = {k: v.as_dict() for k, v in self.metrics.items()}
        data["split_note"] = split_note(self.split)
        return data


def resampling_name(stratified: bool) -> str:
    return "stratified" if stratified else "plain"


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def to_probs(logits: np.ndarray, multilabel: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities from head logits; a single binary logit becomes two columns ``[-z/2, z/2]``
    (their softmax is the sigmoid of ``z``), so every single-label head has C >= 2 logit columns."""
    logits = np.asarray(logits, dtype=np.float64)
    if multilabel:
        return logits, sigmoid(logits)
    if logits.shape[1] == 1:
        logits = np.concatenate([-logits / 2, logits / 2], axis=1)
    return logits, class_probabilities(logits)


def failure_outputs(labels: np.ndarray, n_classes: int, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logits and probabilities of the reference failure: a confident prediction of a wrong class."""
    if multilabel:
        wrong = 1.0 - np.asarray(labels, dtype=float)
        return np.where(wrong > 0, FAIL_LOGIT, -FAIL_LOGIT), wrong
    wrong = (np.asarray(labels) + 1) % n_classes
    probs = np.eye(n_classes)[wrong]
    return np.where(probs > 0, FAIL_LOGIT, -FAIL_LOGIT), probs


def class_index(labels: Iterable[int], classes: list[int], where: str) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted({int(v) for v in labels} - set(lookup))
    if unknown:
        raise DataError(f"{where}: label(s) {unknown} not among the checkpoint's classes {classes}")
    return np.array([lookup[int(v)] for v in labels], dtype=int)


def result_dir(out: Path, model: str, task: str, disease: str, strategy: str, tag: str = "") -> Path:
    base = Path(out) / model / task / disease
    return (base / tag if tag else base) / strategy


def write_outputs(out_dir: Path, split: str, preds: Predictions, result: EvalResult) -> list[Path]:
    """Reference CSVs, the JSON with everything, and the ROC / PR figures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_csv = out_dir / f"{split}{PRED_SUFFIX}"
    write_text_atomic(pred_csv, preds.to_frame().to_csv(index=False))
    metrics_csv = out_dir / f"{split}{METRICS_SUFFIX}"
    write_text_atomic(metrics_csv, pd.DataFrame([result.row()]).to_csv(index=False))
    js = out_dir / f"{split}{JSON_SUFFIX}"
    write_text_atomic(js, json.dumps(result.to_json(), indent=2, default=str, allow_nan=True) + "\n")
    figs = save_roc_pr(
        preds.labels,
        preds.scores,
        out_dir / f"{split}{ROC_SUFFIX}",
        out_dir / f"{split}{PR_SUFFIX}",
        multilabel=preds.multilabel,
        title=" · ".join(p for p in (result.model, result.disease, split) if p),
    )
    return [pred_csv, metrics_csv, js, *figs]


def reference_dir(root: Path, model: str, disease: str, tag: str = "") -> Path:
    """``<root>/<model>/<disease>/results[/<tag>]``: ``<root>/<model>`` is the reference scorer's
    ``--csv_root`` (a tag, e.g. a fold, gets its own folder as the reference's per-fold checkpoint folders)."""
    base = Path(root) / model / disease / "results"
    return base / tag if tag else base


def write_reference_layout(root: Path, preds: Predictions, result: EvalResult) -> list[Path]:
    """The per-sample and metrics files under the names the reference inference gives them (suffixed with
    the strategy) in the folder the reference scorer and organizer script read (:func:`reference_dir`)."""
    folder = reference_dir(root, sanitize_name(result.model), result.disease, result.tag)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = f"_{result.strategy}"
    pred_csv = folder / f"{result.split}{PRED_SUFFIX.removesuffix('.csv')}{suffix}.csv"
    metrics_csv = folder / f"{result.split}{METRICS_SUFFIX.removesuffix('.csv')}{suffix}.csv"
    write_text_atomic(pred_csv, preds.to_frame().to_csv(index=False))
    write_text_atomic(metrics_csv, pd.DataFrame([result.reference_row()]).to_csv(index=False))
    return [pred_csv, metrics_csv]


def write_summary(out: Path, split: str) -> Path:
    """``<out>/<split>_summary.csv``: one row per head with a result of ``split`` under ``out`` (its
    ``<split>_metrics.csv`` row), in path order, so the summary lists what a leaderboard of ``out`` ranks."""
    rows = [pd.read_csv(p) for p in sorted(Path(out).rglob(f"{split}{METRICS_SUFFIX}"))]
    path = Path(out) / f"{split}_summary.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, pd.concat(rows, ignore_index=True).to_csv(index=False))
    return path


def drop_stale_results(out: Path, split: str, results: list[EvalResult], found: Checkpoints) -> list[Path]:
    """Remove this split's result files that an earlier eval wrote, for the models and tasks just evaluated,
    of heads the runs no longer hold (a disease, seed or strategy since dropped), so a leaderboard of ``out``
    never ranks them. Heads left out by a filter or that failed this time keep their results, and so do
    broken diseases and other models. Returns the folders cleaned."""
    keep = {
        result_dir(out, h.model_dir, h.task, h.disease, h.strategy, h.tag).resolve() for h in found.heads
    } | {
        result_dir(out, sanitize_name(r.model), r.task, r.disease, r.strategy, r.tag).resolve()
        for r in results
    }
    stale = []
    for model, task in {(sanitize_name(r.model), r.task) for r in results}:
        for pred in sorted((Path(out) / model / task).rglob(f"{split}{PRED_SUFFIX}")):
            disease = pred.relative_to(Path(out) / model / task).parts[0]
            if pred.parent.resolve() in keep or (model, task, disease) in found.broken:
                continue
            for suffix in RESULT_SUFFIXES:
                (pred.parent / f"{split}{suffix}").unlink(missing_ok=True)
            stale.append(pred.parent)
    return stale


def read_eval_meta(pred_csv: Path) -> dict:
    """The ``<split>_eval.json`` ``ctfm eval`` writes beside ``<split>_per_sample_predictions.csv``."""
    js = pred_csv.with_name(pred_csv.name.removesuffix(PRED_SUFFIX) + JSON_SUFFIX)
    if not js.is_file():
        raise DataError(f"{pred_csv}: no {js.name} beside it; produce results with `ctfm eval`")
    try:
        meta = json.loads(js.read_text())
    except ValueError as exc:
        raise DataError(f"{js}: unreadable ({exc}); rerun `ctfm eval` for it") from None
    if not isinstance(meta, dict):
        raise DataError(f"{js}: not an object; rerun `ctfm eval` for it")
    return meta


def recorded_classes(meta: dict) -> list[int] | None:
    """The class values a result's ``_eval.json`` content records for its head (checkpoint results only)."""
    classes = (meta.get("meta") or {}).get("classes")
    return [int(c) for c in classes] if classes else None


def named_split(path: Path) -> str | None:
    """The split a predictions file's name starts with, as the reference names them
    (``val_per_sample_predictions.csv``, ``test_per_sample_predictions_val_loss.csv``); None otherwise."""
    from ctfm.core.benchmark import load_benchmark

    splits = "|".join(map(re.escape, load_benchmark().section("labels")["splits"]))
    m = re.fullmatch(f"({splits}){re.escape(PRED_SUFFIX.removesuffix('.csv'))}(_.+)?\\.csv", Path(path).name)
    return m.group(1) if m else None


def read_predictions(path: Path, classes: list[int] | None = None) -> Predictions:
    """A per-sample predictions CSV -> Predictions: the reference's format (``label`` and ``prediction`` are
    class indices; rows with ``missing = 1`` are failures, rescored by the reference rule whatever they
    hold), ctfm's earlier format (class values in ``label`` / ``pred``), or multilabel ``label_<j>`` columns.

    ``classes``: the class value of each probability column when known (:func:`recorded_classes`), so a head
    that predicted one class only is read back without guessing from ``pred``."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable predictions CSV ({exc})") from exc
    prob_cols, logit_cols = _indexed(frame, "prob_class_"), _indexed(frame, "logit_class_")
    label_cols = _indexed(frame, "label_")
    if "filename" not in frame.columns or not (prob_cols or logit_cols):
        raise DataError(f"{path}: needs columns filename and prob_class_<i> (or logit_class_<i>)")
    if prob_cols and logit_cols and len(prob_cols) != len(logit_cols):
        raise DataError(
            f"{path}: {len(logit_cols)} logit_class_<i> but {len(prob_cols)} prob_class_<i> columns"
        )
    multilabel = bool(label_cols)
    if not multilabel and "label" not in frame.columns:
        raise DataError(f"{path}: needs a label column (or label_<j> columns for multilabel targets)")
    repeated = frame["filename"][frame["filename"].duplicated()].astype(str).unique().tolist()
    if repeated:
        raise DataError(f"{path}: {len(repeated)} case(s) listed more than once, e.g. {repeated[:3]}")
    if prob_cols:
        probs = _numbers(frame, prob_cols, path)
        logits = _numbers(frame, logit_cols, path) if logit_cols else np.log(np.clip(probs, 1e-300, None))
    else:
        logits, probs = to_probs(_numbers(frame, logit_cols, path), multilabel)
    if not (np.isfinite(probs).all() and np.isfinite(logits).all()):
        raise DataError(f"{path}: non-finite logits or probabilities")
    _check_probabilities(frame, probs, multilabel, path)
    n_classes = probs.shape[1]
    if multilabel:
        labels = _numbers(frame, label_cols, path, integers=True).astype(int)
        classes = []
    elif "pred" in frame.columns and "prediction" not in frame.columns:  # written by an earlier ctfm eval
        if classes is None or len(classes) != n_classes:
            classes = _column_classes(frame, probs, str(path))
        labels = class_index(
            _numbers(frame, ["label"], path, integers=True)[:, 0].astype(int), classes, str(path)
        )
    else:
        labels = _numbers(frame, ["label"], path, integers=True)[:, 0].astype(int)
        outside = (labels < 0) | (labels >= n_classes)
        if outside.any():
            case = frame["filename"].astype(str).to_numpy()[outside][0]
            raise DataError(
                f"{path}: label must be a class index 0..{n_classes - 1} (its logit_class_<i> / prob_class_<i> "
                f"column), not {labels[outside][0]} (e.g. {case})"
            )
        classes = classes if classes is not None and len(classes) == n_classes else list(range(n_classes))
    missing = _missing_flags(frame, path)
    if missing.any():  # the reference's failures: scored as a confident wrong class, whatever the row holds
        logits, probs = logits.copy(), probs.copy()
        logits[missing], probs[missing] = failure_outputs(labels[missing], n_classes, multilabel)
    files = frame["filename"].astype(str).tolist()
    return Predictions(
        files=files,
        labels=labels,
        logits=logits,
        probs=probs,
        failed=[case_id(f) for f, m in zip(files, missing, strict=True) if m],
        classes=classes,
        multilabel=multilabel,
    )


def _indexed(frame: pd.DataFrame, prefix: str) -> list[str]:
    """Columns ``<prefix><i>`` in the order of ``i`` (other columns sharing the prefix are ignored)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)")
    found = [(int(m.group(1)), c) for c in frame.columns if (m := pattern.fullmatch(str(c)))]
    return [c for _, c in sorted(found)]


def _column_classes(frame: pd.DataFrame, probs: np.ndarray, where: str) -> list[int]:
    """The class value of each probability column of a file ``ctfm eval`` wrote before it wrote the
    reference's columns: it held class values (not column indices) in ``label`` / ``pred``, so a head trained
    on classes {1, 2} is read back from which column each ``pred`` is the argmax of; when every prediction
    names its own column, classes are the column indices."""
    n = probs.shape[1]
    seen: dict[int, int] = {}
    preds = _numbers(frame, ["pred"], Path(where), integers=True)[:, 0].astype(int)
    clear = (probs == probs.max(axis=1, keepdims=True)).sum(axis=1) == 1  # a tie names no column
    for col, value in zip(probs[clear].argmax(1), preds[clear], strict=True):
        if seen.setdefault(int(col), int(value)) != int(value):
            raise DataError(
                f"{where}: column prob_class_{col} is predicted as classes {seen[int(col)]} and {value}"
            )
    if all(col == value for col, value in seen.items()):
        return list(range(n))
    if len(seen) < n:
        raise DataError(
            f"{where}: pred holds class values {sorted(seen.values())} that are not the column indices, and "
            f"not every one of the {n} columns is predicted somewhere, so their classes cannot be told apart"
        )
    return [seen[i] for i in range(n)]


def _check_probabilities(frame: pd.DataFrame, probs: np.ndarray, multilabel: bool, path: Path) -> None:
    """Probabilities must lie in [0, 1] and, for one label, sum to 1 per case: Brier score and calibration
    error of anything else are numbers without meaning."""
    names = frame["filename"].astype(str).to_numpy()
    outside = ((probs < 0) | (probs > 1)).any(axis=1)
    if outside.any():
        raise DataError(
            f"{path}: {int(outside.sum())} row(s) with a probability outside [0, 1], e.g. {names[outside][0]}"
        )
    if multilabel:
        return
    off = np.abs(probs.sum(axis=1) - 1.0) > 1e-3
    if off.any():
        total = float(probs[off][0].sum())
        raise DataError(
            f"{path}: {int(off.sum())} row(s) whose class probabilities do not sum to 1, e.g. "
            f"{names[off][0]} ({total:.4g})"
        )


def _missing_flags(frame: pd.DataFrame, path: Path) -> np.ndarray:
    """The reference's ``missing`` column as booleans (all False without one); values other than 0 and 1 are
    one error naming a case."""
    if "missing" not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    values = frame["missing"].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        case = frame["filename"].astype(str).to_numpy()[bad][0]
        raise DataError(f"{path}: {int(bad.sum())} row(s) whose missing is not 0 or 1, e.g. {case}")
    return values == 1.0


def _numbers(frame: pd.DataFrame, columns: list[str], path: Path, integers: bool = False) -> np.ndarray:
    """Columns as floats; an empty or non-numeric cell (or a fractional label) is one error naming a case."""
    values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = np.isnan(values).any(axis=1)
    if integers:
        bad |= (values != np.round(values)).any(axis=1)
    if bad.any():
        case = frame["filename"].astype(str).to_numpy()[bad][0]
        kind = "integer" if integers else "numeric"
        raise DataError(
            f"{path}: {int(bad.sum())} row(s) with an empty or non-{kind} {', '.join(columns)}, e.g. {case}"
        )
    return values
