"""The leaderboard: rank models per disease, aggregate, and show how stable the ranking is.

Scheme (the challenge's): for each disease and each ranking metric (default balanced accuracy and AUROC),
rank all models; a model's score is its mean rank over diseases x metrics; the final rank orders the mean
ranks. The alternative, aggregate-then-rank, averages each metric over diseases first, ranks per metric, and
averages those ranks; it is reported as a column.

Ties: values equal to 12 decimal places share the average of the ranks they span (1, 2.5, 2.5, 4), at every level (per disease,
final rank). A missing value (a model without results for a disease, or an undefined metric such as AUROC on
a one-class resample) ranks below every defined value, tied with the other missing ones. Higher is better
except for ``brier`` and ``ece``.

Metrics are the reference's (:mod:`ctfm.core.metrics`); the challenge ranks on ``balanced_acc`` and
``auroc``. A board of the split the heads were selected on says so (``val: the selection split, optimistic``)
in every file it writes.

Stability: each disease's cases are resampled with replacement, within each class (stratified, as the eval
intervals; ``stratified=False`` draws from all cases), ``n_boot`` times, the same indices for every model,
seeded per disease; set-level metrics and the whole ranking are recomputed per resample, vectorised over
resamples and models. Reported per model: the 95 % percentile interval of its final rank, the share of resamples
it wins (its mean rank is the lowest; a shared first place counts as a win for each), and the pairwise share of
resamples in which model A's mean rank is strictly lower than B's. Kendall's tau-b between the full-data mean
ranks and each resample's mean ranks measures the ranking's overall stability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import DataError
from ctfm.core.metrics import LOWER_IS_BETTER, METRICS, compute_all
from ctfm.core.nifti import case_id
from ctfm.evaluate.bootstrap import (
    CI_LEVEL,
    percentile_interval,
    resample_indices,
    resample_metrics,
    strata_of,
)
from ctfm.evaluate.results import (
    PRED_SUFFIX,
    Predictions,
    failure_outputs,
    read_eval_meta,
    read_predictions,
    recorded_classes,
)
from ctfm.evaluate.splits import split_note

CHUNK = 1000  # resamples per batch (bounds memory near 0.1 GB at 20 models x 300 cases)


@dataclass
class DiseaseScores:
    """One disease's cases, labels and every entry's class probabilities ``[M, N, C]`` (aligned to ``entries``)."""

    disease: str
    files: list[str]
    labels: np.ndarray
    probs: np.ndarray
    multilabel: bool = False
    present: np.ndarray | None = None  # [M] bool: entries with results for this disease (None: all)
    split: str = ""  # the split the cases come from ("" unknown)


@dataclass
class Leaderboard:
    """All numbers of a leaderboard; arrays are indexed [disease, metric, model] or [resample, model]."""

    entries: list[str]
    diseases: list[str]
    metrics: list[str]
    values: np.ndarray  # [D, K, M] full-data metric values
    ranks: np.ndarray  # [D, K, M] per-disease ranks
    mean_rank: np.ndarray  # [M]
    final_rank: np.ndarray  # [M]
    agg_rank: np.ndarray  # [M] aggregate-then-rank alternative
    ci_low: np.ndarray  # [D, K, M] bootstrap interval of each metric
    ci_high: np.ndarray
    boot_ranks: np.ndarray  # [B, M] final rank per resample
    win_share: np.ndarray  # [M]
    beats: np.ndarray  # [M, M] share of resamples where row beats column
    tau: np.ndarray  # [B] Kendall tau-b full vs resample
    degenerate: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [D, K] NaN resamples
    n_boot: int = 0
    seed: int = 0
    missing: dict[str, list[str]] = field(default_factory=dict)  # entry -> diseases it has no result for
    split: str = ""
    resampling: str = "stratified"
    files: list[Path] = field(default_factory=list)  # the board's files, once written

    @property
    def split_note(self) -> str:
        """``val: the selection split, optimistic`` when the board ranks a split the heads were selected on."""
        return split_note(self.split)

    @property
    def missing_text(self) -> str:
        """One line per entry lacking diseases: they rank it last there, which a reader must be told."""
        return "\n".join(
            f"{e} has no result for {', '.join(ds)}: ranked last there (an unfinished or failed `ctfm eval`?)"
            for e, ds in self.missing.items()
        )

    @property
    def rank_interval(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n_boot == 0:
            nan = np.full(len(self.entries), np.nan)
            return nan, nan
        low, high, _ = percentile_interval(self.boot_ranks.T, CI_LEVEL)
        return low, high

    def table(self) -> pd.DataFrame:
        """One row per model, best first."""
        low, high = self.rank_interval
        data: dict[str, object] = {
            "rank": self.final_rank,
            "model": self.entries,
            "mean_rank": self.mean_rank,
            "rank_ci_low": low,
            "rank_ci_high": high,
            "win_share": self.win_share,
            "rank_aggregate_then_rank": self.agg_rank,
        }
        for k, metric in enumerate(self.metrics):
            data[f"mean_{metric}"] = self.values[:, k].mean(axis=0)  # NaN when a disease is missing
            for d, disease in enumerate(self.diseases):
                data[f"{disease}:{metric}"] = self.values[d, k]
                data[f"{disease}:{metric}:rank"] = self.ranks[d, k]
        frame = pd.DataFrame(data)
        return frame.sort_values(["rank", "model"], kind="stable").reset_index(drop=True)

    def beats_table(self) -> pd.DataFrame:
        return pd.DataFrame(self.beats, index=self.entries, columns=self.entries)


# ------------------------------------------------------------------------------------------------ ranks


def average_ranks(values: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Ranks along the last axis (1 = best), ties averaged, NaN worst; vectorised over leading axes."""
    # Values equal to 12 decimals are ties: different float paths to one value must not break them.
    v = np.round(np.asarray(values, dtype=float), 12)
    missing = np.isnan(v)
    key = -v if higher_is_better else v
    key = np.where(missing, np.inf, key)
    a, b = key[..., :, None], key[..., None, :]
    better = (b < a).sum(axis=-1)
    equal = (b == a).sum(axis=-1)
    return 1.0 + better + (equal - 1) / 2.0


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b between one vector ``x [M]`` and each row of ``y [B, M]`` (as scipy's ``kendalltau``)."""
    x = np.asarray(x, dtype=float)
    y = np.atleast_2d(np.asarray(y, dtype=float))
    iu = np.triu_indices(x.shape[-1], k=1)
    sx = np.sign(x[:, None] - x[None, :])[iu]
    sy = np.sign(y[:, :, None] - y[:, None, :])[:, iu[0], iu[1]]
    n0 = len(iu[0])
    tx = n0 - np.count_nonzero(sx)
    ty = n0 - np.count_nonzero(sy, axis=1)
    denom = np.sqrt(float(n0 - tx) * (n0 - ty))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (sy * sx).sum(axis=1) / denom, np.nan)


def _rank_stack(values: np.ndarray, metrics: list[str]) -> np.ndarray:
    """Per-disease ranks ``[..., D, K, M]`` of metric values of the same shape."""
    out = np.empty(values.shape, dtype=float)
    for k, metric in enumerate(metrics):
        out[..., k, :] = average_ranks(values[..., k, :], higher_is_better=metric not in LOWER_IS_BETTER)
    return out


def aggregate(values: np.ndarray, metrics: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-disease ranks, mean rank and final rank from metric values ``[..., D, K, M]``."""
    ranks = _rank_stack(values, metrics)
    mean_rank = ranks.mean(axis=(-3, -2))
    return ranks, mean_rank, average_ranks(mean_rank, higher_is_better=False)


def aggregate_then_rank(values: np.ndarray, metrics: list[str]) -> np.ndarray:
    """Average each metric over diseases (missing counts as missing -> worst), rank per metric, average, rank."""
    with np.errstate(invalid="ignore"):
        per_metric = values.mean(axis=-3)  # NaN if a disease is missing: such a model ranks last
    ranks = _rank_stack(per_metric[..., None, :, :], metrics)[..., 0, :, :]
    return average_ranks(ranks.mean(axis=-2), higher_is_better=False)


# --------------------------------------------------------------------------------------------- building


def _disease_metrics(data: DiseaseScores, metrics: list[str], idx: np.ndarray | None) -> np.ndarray:
    """Metric values ``[K, M]`` (idx None) or ``[K, B, M]`` for resampled case indices ``idx [B, N]``."""
    n_models = data.probs.shape[0]
    present = np.ones(n_models, dtype=bool) if data.present is None else data.present
    if idx is None:
        y = np.broadcast_to(data.labels[None], (n_models, *data.labels.shape))
        res = compute_all(y, data.probs, multilabel=data.multilabel, names=metrics)
        out = np.stack([np.asarray(res[m], dtype=float).reshape(n_models) for m in metrics])
    else:
        res = resample_metrics(data.labels, data.probs, idx, metrics, data.multilabel)
        out = np.stack([res[m].T for m in metrics])
    out[..., ~present] = np.nan
    return out


def _disease_seed(seed: int, d: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, d]))


def build_leaderboard(
    data: list[DiseaseScores],
    entries: list[str],
    metrics: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    stratified: bool = True,
) -> Leaderboard:
    """Rank ``entries`` on every disease of ``data`` and measure the ranking's stability by bootstrap.

    ``metrics`` default to the challenge's ranking metrics (``configs/benchmark.yaml``, ``ranking``)."""
    metrics = list(metrics or load_benchmark().ranking_metrics)
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise DataError(f"unknown ranking metric(s) {unknown}; choose from {', '.join(METRICS)}")
    if not data:
        raise DataError("no disease to rank")
    m = len(entries)
    values = np.stack([_disease_metrics(dd, metrics, None) for dd in data])  # [D, K, M]
    ranks, mean_rank, final_rank = aggregate(values, metrics)
    agg = aggregate_then_rank(values, metrics)
    boot = np.full((max(n_boot, 0), len(data), len(metrics), m), np.nan)
    for d, dd in enumerate(data):
        if n_boot <= 0:
            break
        idx = disease_resamples(dd, n_boot, seed, d, stratified)
        for start in range(0, n_boot, CHUNK):
            chunk = idx[start : start + CHUNK]
            boot[start : start + len(chunk), d] = np.moveaxis(_disease_metrics(dd, metrics, chunk), 1, 0)
    _, boot_mean, boot_final = aggregate(boot, metrics)
    if n_boot > 0:
        low, high, bad = percentile_interval(np.moveaxis(boot, 0, -1), CI_LEVEL)
    else:
        low, high, bad = (
            np.full(values.shape, np.nan),
            np.full(values.shape, np.nan),
            np.zeros(values.shape, int),
        )
    if n_boot > 0:
        best = boot_mean.min(axis=1, keepdims=True)
        win_share = (boot_mean == best).mean(axis=0)
        beats = (boot_mean[:, :, None] < boot_mean[:, None, :]).mean(axis=0)
        tau = kendall_tau_b(mean_rank, boot_mean)
    else:
        win_share, beats, tau = np.full(m, np.nan), np.full((m, m), np.nan), np.zeros(0)
    return Leaderboard(
        entries=list(entries),
        diseases=[dd.disease for dd in data],
        metrics=metrics,
        values=values,
        ranks=ranks,
        mean_rank=mean_rank,
        final_rank=final_rank,
        agg_rank=agg,
        ci_low=low,
        ci_high=high,
        boot_ranks=boot_final,
        win_share=win_share,
        beats=beats,
        tau=tau,
        degenerate=bad.max(axis=-1) if n_boot > 0 else np.zeros((len(data), len(metrics))),
        n_boot=max(n_boot, 0),
        seed=seed,
        missing=missing_results(data, entries),
        split=data[0].split,
        resampling="stratified" if stratified else "plain",
    )


def disease_resamples(
    dd: DiseaseScores, n_boot: int, seed: int, d: int, stratified: bool = True
) -> np.ndarray:
    """The ``[n_boot, N]`` case indices of disease number ``d``, seeded per disease."""
    strata = strata_of(dd.labels, dd.multilabel) if stratified else None
    return resample_indices(len(dd.labels), n_boot, _disease_seed(seed, d), strata)


def missing_results(data: list[DiseaseScores], entries: Sequence[str]) -> dict[str, list[str]]:
    """Diseases each entry has no result for (absent from ``DiseaseScores.present``)."""
    missing: dict[str, list[str]] = {}
    for dd in data:
        if dd.present is not None:
            for entry, here in zip(entries, dd.present, strict=True):
                if not here:
                    missing.setdefault(entry, []).append(dd.disease)
    return missing


# --------------------------------------------------------------------------------------------- gathering


def gather(
    results: Path, split: str | None = None, strategies: list[str] | None = None, task: str | None = None
) -> tuple[list[DiseaseScores], list[str]]:
    """Read every ``<split>_per_sample_predictions.csv`` under ``results`` into per-disease arrays.

    One leaderboard ranks one split of one task (``lp`` or ``eao``, as the challenge ranks its two tasks
    apart): results holding several must be narrowed with ``split`` / ``task``.

    An entry is a model, or ``model [strategy]`` when several strategies are present, plus ``(tag)`` for a
    probe run tag (fold, seed). Every entry is scored from its logits as the reference scores them
    (:func:`~ctfm.core.metrics.class_probabilities`).
    A case one entry lacks is scored as a failure for it (confident wrong class); an entry without any result
    for a disease gets NaN there (ranked last).
    """
    results = Path(results)
    files = sorted(results.rglob(f"*{PRED_SUFFIX}"))
    if not files:
        raise DataError(f"{results}: no *{PRED_SUFFIX} found; run `ctfm eval --out {results}` first")
    found, untasked = [], []
    for f in files:
        meta = read_eval_meta(f)
        if split and meta.get("split") != split:
            continue
        if strategies and meta.get("strategy") not in strategies:
            continue
        if not meta.get("task"):  # a predictions file scored without --task: which board is it on?
            untasked.append(f)
        elif task and meta.get("task") != task:
            continue
        found.append((f, meta))
    if untasked and (task or len({m.get("task") for _, m in found}) > 1):
        raise DataError(
            f"{untasked[0]}: scored from a predictions file without --task ({len(untasked)} such result(s)), "
            "so it belongs to no task's board; rescore it with `ctfm eval --predictions ... --task lp|eao`"
        )
    if not found:
        asked = {"split": split, "task": task, "strategy": ", ".join(strategies or [])}
        raise DataError(
            f"{results}: no result has " + " and ".join(f"{k} {v}" for k, v in asked.items() if v)
        )
    splits = sorted({meta.get("split") for _, meta in found})
    if len(splits) != 1:
        raise DataError(f"{results}: results for splits {splits}; pick one with --split")
    tasks = sorted({str(meta.get("task")) for _, meta in found})
    if len(tasks) != 1:
        raise DataError(f"{results}: results for tasks {tasks}; pick one with --task")
    multi_strategy = len({meta.get("strategy") for _, meta in found}) > 1
    by_disease: dict[str, dict[str, tuple[Path, dict]]] = {}
    for f, meta in found:
        entry = f"{meta['model']} [{meta['strategy']}]" if multi_strategy else str(meta["model"])
        entry += f" ({meta['tag']})" if meta.get("tag") else ""
        slot = by_disease.setdefault(str(meta["disease"]), {})
        if entry in slot:
            raise DataError(f"{f}: a second result for {entry} on {meta['disease']} (also {slot[entry][0]})")
        slot[entry] = (f, meta)
    entries = sorted({e for slot in by_disease.values() for e in slot})
    out: list[DiseaseScores] = []
    for disease in sorted(by_disease):
        preds = {
            e: read_predictions(f, recorded_classes(meta)) for e, (f, meta) in by_disease[disease].items()
        }
        cases = {e: [case_id(f) for f in p.files] for e, p in preds.items()}  # older files named x.nii.gz
        files_all = sorted({c for names in cases.values() for c in names})
        pos = {f: i for i, f in enumerate(files_all)}
        first = next(iter(preds.values()))
        shape = (len(files_all), *first.probs.shape[1:])
        labels = np.full((len(files_all), *first.labels.shape[1:]), -1, dtype=int)
        for e, p in preds.items():
            rows = [pos[c] for c in cases[e]]
            if p.probs.shape[1:] != first.probs.shape[1:] or p.multilabel != first.multilabel:
                raise DataError(
                    f"{by_disease[disease][e][0]}: class columns differ from other models on {disease}"
                )
            clash = (labels[rows] >= 0) & (labels[rows] != p.labels)
            if clash.any():
                raise DataError(
                    f"{by_disease[disease][e][0]}: labels disagree with another model's on {disease}"
                )
            labels[rows] = p.labels
        # an entry lacking a case fails it (the reference rule, scored from its logits as every case is)
        fail = Predictions(
            files_all,
            labels,
            *failure_outputs(labels, shape[-1], first.multilabel),
            multilabel=first.multilabel,
        )
        probs = np.broadcast_to(fail.scores, (len(entries), *shape)).copy()
        present = np.array([e in preds for e in entries])
        for m, e in enumerate(entries):
            if e in preds:
                probs[m, [pos[c] for c in cases[e]]] = preds[e].scores
        out.append(DiseaseScores(disease, files_all, labels, probs, first.multilabel, present, splits[0]))
    return out, entries
