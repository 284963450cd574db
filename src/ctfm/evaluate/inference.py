"""Score trained heads: rebuild each checkpoint, predict every case of a split, write the reference files.

A case of the split without a usable embedding (absent from the store, failed, timed out) is never dropped:
it is scored as a failure by the reference rule, a confident prediction of a wrong class (probability 1 for
class ``(label + 1) mod C``, logits ``+FAIL_LOGIT`` / ``-FAIL_LOGIT``), and counted in ``failed_cases``.

Output per checkpoint, in ``<out>/<model>/<task>/<disease>/<strategy>/``:
``<split>_metrics.csv`` (one row: every metric, its 95 % CI, ``failed_cases``, ``n_cases``),
``<split>_per_sample_predictions.csv`` (``filename, label, pred, logit_class_<i>, prob_class_<i>``),
``<split>_eval.json`` (everything, including checkpoint metadata and the failed case names),
``<split>_roc.png`` and ``<split>_pr.png``. ``<out>/<split>_summary.csv`` has one row per checkpoint.
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
from ctfm.evaluate.metrics import METRICS, predict
from ctfm.fsutil import write_text_atomic
from ctfm.store import sanitize_name

FAIL_LOGIT = 30.0
PRED_SUFFIX = "_per_sample_predictions.csv"
METRICS_SUFFIX = "_metrics.csv"
JSON_SUFFIX = "_eval.json"
ROC_SUFFIX, PR_SUFFIX = "_roc.png", "_pr.png"
RESULT_SUFFIXES = (PRED_SUFFIX, METRICS_SUFFIX, JSON_SUFFIX, ROC_SUFFIX, PR_SUFFIX)  # one result's files


@dataclass
class Predictions:
    """Per-case outputs of one head on one split, in the reference per-sample format.

    ``labels`` is ``[N]`` (binary/multiclass: class index into ``classes``) or ``[N, L]`` (multilabel).
    """

    files: list[str]
    labels: np.ndarray
    logits: np.ndarray
    probs: np.ndarray
    failed: list[str] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    multilabel: bool = False

    @property
    def preds(self) -> np.ndarray:
        return predict(self.probs, self.multilabel)

    def to_frame(self) -> pd.DataFrame:
        cols: dict[str, Any] = {"filename": self.files}
        if self.multilabel:
            for j in range(self.labels.shape[1]):
                cols[f"label_{j}"] = self.labels[:, j]
            for j in range(self.labels.shape[1]):
                cols[f"pred_{j}"] = self.preds[:, j]
        else:
            names = np.asarray(self.classes or range(self.probs.shape[1]))
            cols["label"] = names[self.labels]
            cols["pred"] = names[self.preds]
        for i in range(self.logits.shape[1]):
            cols[f"logit_class_{i}"] = self.logits[:, i]
        for i in range(self.probs.shape[1]):
            cols[f"prob_class_{i}"] = self.probs[:, i]
        return pd.DataFrame(cols)


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

    def row(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "task": self.task,
            "disease": self.disease,
            "strategy": self.strategy,
            "tag": self.tag,
            "split": self.split,
            "n_cases": self.n_cases,
            "failed_cases": self.failed_cases,
        }
        for key in METRICS:
            ci = self.metrics[key]
            out[key] = ci.value
            out[f"{key}_ci_low"] = ci.low
            out[f"{key}_ci_high"] = ci.high
            out[f"{key}_degenerate"] = ci.degenerate
        return out

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["metrics"] = {k: v.as_dict() for k, v in self.metrics.items()}
        return data


# --------------------------------------------------------------------------------------------- helpers


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def to_probs(logits: np.ndarray, multilabel: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities from head logits; a single binary logit becomes two columns ``[-z/2, z/2]``."""
    logits = np.asarray(logits, dtype=np.float64)
    if multilabel:
        return logits, sigmoid(logits)
    if logits.shape[1] == 1:
        logits = np.concatenate([-logits / 2, logits / 2], axis=1)
    return logits, softmax(logits)


def failure_outputs(labels: np.ndarray, n_classes: int, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logits and probabilities of the reference failure: a confident prediction of a wrong class."""
    if multilabel:
        wrong = 1.0 - np.asarray(labels, dtype=float)
        return np.where(wrong > 0, FAIL_LOGIT, -FAIL_LOGIT), wrong
    wrong = (np.asarray(labels) + 1) % n_classes
    probs = np.eye(n_classes)[wrong]
    return np.where(probs > 0, FAIL_LOGIT, -FAIL_LOGIT), probs


def score(preds: Predictions, n_boot: int, seed: int) -> dict[str, Interval]:
    return bootstrap_metrics(preds.labels, preds.probs, n_boot=n_boot, seed=seed, multilabel=preds.multilabel)


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
        files=table["file"].tolist(),
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
    from ctfm.evaluate.report import save_roc_pr

    out_dir.mkdir(parents=True, exist_ok=True)
    pred_csv = out_dir / f"{split}{PRED_SUFFIX}"
    write_text_atomic(pred_csv, preds.to_frame().to_csv(index=False))
    metrics_csv = out_dir / f"{split}{METRICS_SUFFIX}"
    write_text_atomic(metrics_csv, pd.DataFrame([result.row()]).to_csv(index=False))
    js = out_dir / f"{split}{JSON_SUFFIX}"
    write_text_atomic(js, json.dumps(result.to_json(), indent=2, default=str, allow_nan=True) + "\n")
    figs = save_roc_pr(
        preds.labels,
        preds.probs,
        out_dir / f"{split}{ROC_SUFFIX}",
        out_dir / f"{split}{PR_SUFFIX}",
        multilabel=preds.multilabel,
        title=" · ".join(p for p in (result.model, result.disease, split) if p),
    )
    return [pred_csv, metrics_csv, js, *figs]


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
) -> EvalResult:
    """Predict, score with bootstrap intervals, and write every file for one checkpoint."""
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
        metrics=score(preds, n_boot, seed),
        failed=preds.failed,
        checkpoint=str(checkpoint),
        meta={k: v for k, v in meta.items() if k != "state_dict"},
        tag=tag,
    )
    out_dir = result_dir(out, sanitize_name(result.model), result.task, result.disease, result.strategy, tag)
    write_outputs(out_dir, split, preds, result)
    return result


# ------------------------------------------------------------------------------ from a predictions file


def _indexed(frame: pd.DataFrame, prefix: str) -> list[str]:
    """Columns ``<prefix><i>`` in the order of ``i`` (other columns sharing the prefix are ignored)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)")
    found = [(int(m.group(1)), c) for c in frame.columns if (m := pattern.fullmatch(str(c)))]
    return [c for _, c in sorted(found)]


def _column_classes(frame: pd.DataFrame, probs: np.ndarray, where: str) -> list[int]:
    """The class value of each probability column. ``ctfm eval`` writes class values (not column indices) in
    ``label`` / ``pred``, so a head trained on classes {1, 2} is read back from which column each ``pred``
    is the argmax of; without a ``pred`` column, or when every prediction names its own column, classes are
    the column indices."""
    n = probs.shape[1]
    if "pred" not in frame.columns:
        return list(range(n))
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
    """A per-sample predictions CSV (reference format; multilabel: ``label_<j>`` columns) -> Predictions.

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
    if not np.isfinite(probs).all():
        raise DataError(f"{path}: non-finite probabilities")
    _check_probabilities(frame, probs, multilabel, path)
    if multilabel:
        labels = _numbers(frame, label_cols, path, integers=True).astype(int)
        classes: list[int] = []
    else:
        if classes is None or len(classes) != probs.shape[1]:
            classes = _column_classes(frame, probs, str(path))
        labels = _class_index(
            _numbers(frame, ["label"], path, integers=True)[:, 0].astype(int), classes, str(path)
        )
    return Predictions(
        files=frame["filename"].astype(str).tolist(),
        labels=labels,
        logits=logits,
        probs=probs,
        classes=classes,
        multilabel=multilabel,
    )


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
    """Re-order predictions to the label table's cases, taking labels from it; absent cases become failures."""
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
    failed: list[str] = []
    for row, case in enumerate(table["case"]):
        if case in pos:
            logits[row], probs[row] = preds.logits[pos[case]], preds.probs[pos[case]]
        else:
            failed.append(case)
    return Predictions(table["file"].tolist(), labels, logits, probs, failed, preds.classes)


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
) -> EvalResult:
    """Recompute every metric from a per-sample predictions file (for organizers who receive predictions).

    ``model`` names the entry for the leaderboard (default: the file's folder name); ``task`` (lp or eao)
    the board it is ranked on beside checkpoint-scored models.

    ``labels`` is a label CSV or the labels folder (then ``disease`` picks ``<disease>.csv``); its labels are
    the truth, and a case of the chosen ``split`` missing from the file is scored as a failure.
    """
    from ctfm.labels import labels_path, read_labels

    predictions = Path(predictions)
    preds = read_predictions(predictions, _own_classes(predictions))
    split_name = split or predictions.name.removesuffix(PRED_SUFFIX).removesuffix(".csv")
    if labels is not None:
        labels = Path(labels)
        if labels.is_dir():
            if not disease:
                raise DataError(f"{labels}: is a folder; pass --disease to pick <disease>.csv")
            labels = labels_path(labels, disease)
        table = read_labels(labels, disease or labels.stem)
        if split:
            _refuse_other_splits(preds, table, split, predictions)
            table = table[table["split"] == split].reset_index(drop=True)
        else:
            from ctfm.nifti import case_id

            have = {case_id(f) for f in preds.files}
            table = table[table["case"].isin(have)].reset_index(drop=True)
        if table.empty:
            raise DataError(f"{labels}: no labelled case for these predictions (split {split or 'any'})")
        preds = align_to_labels(preds, table, str(predictions))
    result = EvalResult(
        model=model or predictions.parent.name,
        task=task,
        disease=disease or (labels.stem if labels is not None else ""),
        strategy="predictions",
        split=split_name,
        n_cases=len(preds.files),
        failed_cases=len(preds.failed),
        metrics=score(preds, n_boot, seed),
        failed=preds.failed,
        checkpoint=str(predictions),
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
