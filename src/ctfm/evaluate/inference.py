"""Score trained heads: rebuild each checkpoint, predict every case of a split, write the reference files.

A case of the split without a usable embedding (absent from the store, failed, timed out) is never dropped:
it is scored as a failure by the reference rule, a confident prediction of a wrong class (class
``(label + 1) mod C``: logits ``+FAIL_LOGIT`` there and ``-FAIL_LOGIT`` elsewhere, probability 1 there in the
file), written last with ``missing = 1`` and counted in ``n_missing_failed``. Metrics are computed from the
logits as the reference computes them (:func:`~ctfm.metrics.class_probabilities`).

Output per checkpoint, in ``<out>/<model>/<task>/<disease>/[<tag>/]<strategy>/``:
``<split>_per_sample_predictions.csv`` (exactly the reference's columns ``filename, label, prediction,
missing, logit_class_<i>, prob_class_<i>``; ``label`` and ``prediction`` are class indices, the class values
are in the JSON), ``<split>_metrics.csv`` (the reference's metric and tag columns, then ctfm's: identity,
the additions of :data:`~ctfm.metrics.EXTRA_METRICS` and every metric's 95 % interval),
``<split>_eval.json`` (everything, including checkpoint metadata and the failed case names),
``<split>_roc.png`` and ``<split>_pr.png``. ``<out>/<split>_summary.csv`` has one row per checkpoint.
With a reference root, :func:`write_reference_layout` also lays the files out as the reference's scorer and
organizer scripts read them: ``<root>/<model>/<disease>/results/<split>_per_sample_predictions_<strategy>.csv``
and ``<split>_metrics_<strategy>.csv``, as the reference inference names them.
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

from ctfm.errors import DataError, StoreError
from ctfm.evaluate.bootstrap import Interval, bootstrap_metrics
from ctfm.evaluate.curves import save_roc_pr
from ctfm.evaluate.splits import split_note
from ctfm.fsutil import write_text_atomic
from ctfm.metrics import METRICS, REFERENCE_METRICS, class_probabilities, predict
from ctfm.store import sanitize_name

FAIL_LOGIT = 10.0  # the reference's failure logits
RESULT_FORMAT = 2  # of the files written here; 2: the reference's columns and metric definitions
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
        from ctfm.nifti import case_id

        failed = set(self.failed)
        return np.array([case_id(f) in failed for f in self.files], dtype=bool)

    @property
    def scores(self) -> np.ndarray:
        """The probabilities the metrics use: :func:`~ctfm.metrics.class_probabilities` of the logits, as the reference scores its
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
            "checkpoint": Path(self.checkpoint).name,
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


# --------------------------------------------------------------------------------------------- helpers


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


def score(preds: Predictions, n_boot: int, seed: int, stratified: bool = True) -> dict[str, Interval]:
    return bootstrap_metrics(
        preds.labels,
        preds.scores,
        n_boot=n_boot,
        seed=seed,
        multilabel=preds.multilabel,
        stratified=stratified,
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


# ------------------------------------------------------------------------------------------ checkpoints


@dataclass(frozen=True)
class HeadRef:
    """One checkpoint to evaluate, as found through :mod:`ctfm.probe.layout`."""

    path: Path
    model_dir: str
    task: str
    disease: str
    strategy: str
    tag: str = ""
    split_column: str = "split"  # the column whose train/val the head was trained and selected on


@dataclass
class Checkpoints:
    """What a probe ``--out`` folder holds: its heads, and the diseases whose heads could not be listed."""

    heads: list[HeadRef]
    problems: list[str]  # one line per broken disease (unreadable summary, missing checkpoint)
    broken: set[tuple[str, str, str]]  # their (model folder, task, disease)

    def only(self, strategies: list[str] | None) -> list[HeadRef]:
        return [h for h in self.heads if not strategies or h.strategy in strategies]


def find_checkpoints(
    runs: Path,
    strategies: list[str] | None = None,
    diseases: list[str] | None = None,
    model: str | None = None,
) -> Checkpoints:
    """Every head of every finished run recorded in the probe summaries under a ``ctfm probe --out``
    folder (optionally only some diseases or one model folder); a broken disease is a problem line and the
    others are still listed. Raises when no head of ``strategies`` (all when None) is found at all."""
    from ctfm.probe.layout import TASK_FOLDERS, DiseaseLayout, list_diseases

    runs = Path(runs)
    if not runs.is_dir():
        raise DataError(f"{runs}: run folder not found; pass the --out folder of `ctfm probe`")
    found = Checkpoints([], [], set())
    for model_dir in sorted(p.name for p in runs.iterdir() if p.is_dir() and model in (None, p.name)):
        for task in TASK_FOLDERS:
            for disease in list_diseases(runs, model_dir, task):
                if diseases is not None and disease not in diseases:
                    continue
                try:
                    found.heads += _disease_heads(DiseaseLayout.of(runs, model_dir, disease, task), model_dir)
                except DataError as exc:
                    found.problems.append(str(exc))
                    found.broken.add((model_dir, task, disease))
    if not found.only(strategies) and not found.problems:
        wanted = f" for strategies {', '.join(strategies)}" if strategies else ""
        raise DataError(f"{runs}: no finished probe checkpoint{wanted}; run `ctfm probe` first")
    return found


def _disease_heads(layout: Any, model_dir: str) -> list[HeadRef]:
    heads = []
    for run in layout.runs():
        for strategy in run["selections"]:
            path = layout.run(run["tag"]).checkpoint(strategy)
            if not path.is_file():
                raise DataError(f"checkpoint missing: {path}; rerun the probe with --force")
            heads.append(
                HeadRef(
                    path, model_dir, layout.task, layout.dir.name, strategy, run["tag"], run["split_column"]
                )
            )
    return heads


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


def _class_index(labels: Iterable[int], classes: list[int], where: str) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted({int(v) for v in labels} - set(lookup))
    if unknown:
        raise DataError(f"{where}: label(s) {unknown} not among the checkpoint's classes {classes}")
    return np.array([lookup[int(v)] for v in labels], dtype=int)


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
    from ctfm.labels import labels_path, read_labels
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
    labels = _class_index(table["label"], classes, f"{disease} labels")
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


# ------------------------------------------------------------------------------------------------ files


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
    result = EvalResult(
        model=str(src.get("model", "")),
        task=str(src.get("task", meta.get("kind", "lp"))),
        disease=str(meta["disease"]),
        strategy=str(meta.get("strategy", Path(checkpoint).stem)),
        split=split,
        n_cases=len(preds.files),
        failed_cases=len(preds.failed),
        metrics=score(preds, n_boot, seed, stratified),
        failed=preds.failed,
        checkpoint=str(checkpoint),
        meta={k: v for k, v in meta.items() if k != "state_dict"},
        tag=tag,
        tags=reference_tags(meta, split_column),
        resampling=_scheme(stratified),
    )
    out_dir = result_dir(out, sanitize_name(result.model), result.task, result.disease, result.strategy, tag)
    write_outputs(out_dir, split, preds, result)
    if reference_root is not None:
        write_reference_layout(reference_root, preds, result)
    return result


def _scheme(stratified: bool) -> str:
    return "stratified" if stratified else "plain"


# ------------------------------------------------------------------------------ from a predictions file


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
        labels = _class_index(
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
    from ctfm.nifti import case_id

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


def align_to_labels(preds: Predictions, table: pd.DataFrame, where: str) -> Predictions:
    """Re-order predictions to the label table's cases, taking labels from it; a case absent from the
    predictions or flagged ``missing`` there is a failure (the reference rule, on the table's label)."""
    from ctfm.nifti import case_id

    if preds.multilabel:
        raise DataError(f"{where}: multilabel predictions carry their own label_<j> columns; omit --labels")
    pos = {case_id(f): i for i, f in enumerate(preds.files)}
    extra = sorted(set(pos) - set(table["case"]))
    if extra:
        raise DataError(f"{where}: {len(extra)} predicted case(s) not in the labels, e.g. {extra[:3]}")
    n_classes = preds.probs.shape[1]
    labels = _class_index(table["label"], preds.classes or list(range(n_classes)), where)
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
    from ctfm.nifti import case_id

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


def named_split(path: Path) -> str | None:
    """The split a predictions file's name starts with, as the reference names them
    (``val_per_sample_predictions.csv``, ``test_per_sample_predictions_val_loss.csv``); None otherwise."""
    from ctfm.benchmark import load_benchmark

    splits = "|".join(map(re.escape, load_benchmark().section("labels")["splits"]))
    m = re.fullmatch(f"({splits}){re.escape(PRED_SUFFIX.removesuffix('.csv'))}(_.+)?\\.csv", Path(path).name)
    return m.group(1) if m else None


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
    from ctfm.labels import labels_path, read_labels

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
    result = EvalResult(
        model=model or predictions.parent.name,
        task=task,
        disease=disease or (labels.stem if labels is not None else ""),
        strategy="predictions",
        split=split_name,
        n_cases=len(preds.files),
        failed_cases=len(preds.failed),
        metrics=score(preds, n_boot, seed, stratified),
        failed=preds.failed,
        checkpoint=str(predictions),
        resampling=_scheme(stratified),
    )
    write_outputs(Path(out), split_name, preds, result)
    return result


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


def write_summary(results: list[EvalResult], out: Path, split: str) -> Path:
    path = Path(out) / f"{split}_summary.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, pd.DataFrame([r.row() for r in results]).to_csv(index=False))
    return path
