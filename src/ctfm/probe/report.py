"""Run reports: ``val_report.csv`` (the reference's table), ``grid_report.csv``, ``history.csv``, the figure
(:mod:`ctfm.probe.figure`).

``val_report.csv`` has one row per checkpoint strategy, indexed by the strategy name, with the val metrics of
its selected head (acc, f1, auroc, ap, sensitivity, specificity, balanced_acc, loss, val_balacc_auroc,
val_balacc_loss, train_loss) then head, norm, betas, selected_epoch, checkpoint (the reference-format file), as
the reference writes it, plus ctfm_checkpoint, lr, weight_decay and eps. ``grid_report.csv`` has one row per grid point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ctfm.core.fsutil import atomic_path
from ctfm.probe.figure import METRIC_COLUMNS, FigureData, FigureWorker, progress_figure
from ctfm.probe.layout import RunLayout
from ctfm.probe.training import STRATEGIES, FitResult, Selection


def _write_csv(frame: pd.DataFrame, path: Path, index: bool = False) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index)


def selected_train_loss(fit: FitResult, sel: Selection) -> float:
    """The train loss of a selection's head over its selected epoch (NaN when the history has none)."""
    hist = fit.history
    at = hist[(hist["head"] == sel.head) & (hist["epoch"] == sel.epoch)]
    return float(at["train_loss"].iloc[0]) if len(at) else float("nan")


def val_report(fit: FitResult, layout: RunLayout, references: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per strategy: its selected head's val metrics and identity (reference columns first).

    ``checkpoint`` is what the reference's column holds: the strategy's checkpoint file in the reference's
    format (``references``: strategy -> run-relative path; empty when none was written); ctfm's own is in
    ``ctfm_checkpoint``."""
    references = references or {}
    rows = {}
    for name, sel in fit.selections.items():
        head = fit.heads[sel.head]
        row = dict(sel.metrics)
        row["train_loss"] = selected_train_loss(fit, sel)
        row.update(
            {
                "head": head["name"],
                "norm": head.get("norm", ""),
                "betas": tuple(head["betas"]) if "betas" in head else "",
                "selected_epoch": sel.epoch,
                "checkpoint": references.get(name, ""),
                "ctfm_checkpoint": layout.checkpoint(name).relative_to(layout.dir).as_posix(),
            }
        )
        row.update({k: v for k, v in head.items() if k not in ("name", "norm", "betas")})
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def grid_report(fit: FitResult, monitor: str) -> pd.DataFrame:
    """One row per grid point: hyper-parameters, when it stopped, its best epoch and val metrics there."""
    mode = STRATEGIES[monitor][0]
    hist = fit.history
    by_head = dict(iter(hist.groupby("head"))) if len(hist) else {}
    empty = hist.iloc[:0]
    rows = []
    for i, head in enumerate(fit.heads):
        h = by_head.get(i, empty)
        row = dict(head)
        if "betas" in row:
            row["betas"] = tuple(row["betas"])
        row["epochs_trained"] = int(h["epoch"].max()) if len(h) else 0
        row["stopped_epoch"] = int(fit.stopped_epoch[i])
        if len(h):
            score = STRATEGIES[monitor][1]({c: h[c].to_numpy() for c in METRIC_COLUMNS})
            score = np.where(np.isnan(score), -np.inf if mode == "max" else np.inf, score)
            best = int(np.argmax(score) if mode == "max" else np.argmin(score))
            row["best_epoch"] = int(h["epoch"].iloc[best])
            for c in METRIC_COLUMNS:
                row[f"best_{c}"] = float(h[c].iloc[best])
            row["min_val_loss"] = float(h["val_loss"].min())
            row["max_val_balanced_acc"] = float(h["val_balanced_acc"].max())
            row["max_val_auroc"] = float(h["val_auroc"].max())
        rows.append(row)
    return pd.DataFrame(rows)


def write_reports(
    fit: FitResult,
    layout: RunLayout,
    monitor: str,
    figures: FigureWorker | None = None,
    references: dict[str, str] | None = None,
) -> None:
    """val_report.csv, grid_report.csv, history.csv and progress.png of one run (drawn by ``figures``
    when given: then it is written once ``figures.finish()`` returns); ``references``: see :func:`val_report`."""
    layout.dir.mkdir(parents=True, exist_ok=True)
    _write_csv(val_report(fit, layout, references), layout.val_report, index=True)
    _write_csv(grid_report(fit, monitor), layout.grid_report)
    hist = fit.history.copy()
    hist.insert(2, "head_name", [fit.heads[i]["name"] for i in hist["head"]])
    _write_csv(hist, layout.history)
    if figures is None:
        progress_figure(FigureData.of(fit), layout.progress)
    else:
        figures.draw(FigureData.of(fit), layout.progress)
