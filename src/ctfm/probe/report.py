"""Run reports: ``val_report.csv`` (the reference's table), ``grid_report.csv``, ``history.csv``, the figure.

``val_report.csv`` has one row per checkpoint strategy, indexed by the strategy name, with the val metrics of
its selected head (acc, f1, auroc, ap, sensitivity, specificity, balanced_acc, loss, val_balacc_auroc,
val_balacc_loss, train_loss) then head, norm, betas, selected_epoch, checkpoint, as the reference writes it,
plus lr, weight_decay and eps. ``grid_report.csv`` has one row per grid point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ctfm.fsutil import atomic_path
from ctfm.probe.layout import RunLayout
from ctfm.probe.training import STRATEGIES, FitResult, Selection

METRIC_COLUMNS = ("val_loss", "val_balanced_acc", "val_auroc")


def _write_csv(frame: pd.DataFrame, path: Path, index: bool = False) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index)


def selected_train_loss(fit: FitResult, sel: Selection) -> float:
    """The train loss of a selection's head over its selected epoch (NaN when the history has none)."""
    hist = fit.history
    at = hist[(hist["head"] == sel.head) & (hist["epoch"] == sel.epoch)]
    return float(at["train_loss"].iloc[0]) if len(at) else float("nan")


def val_report(fit: FitResult, layout: RunLayout) -> pd.DataFrame:
    """One row per strategy: its selected head's val metrics and identity (reference columns first)."""
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
                "checkpoint": layout.checkpoint(name).relative_to(layout.dir).as_posix(),
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


def write_reports(fit: FitResult, layout: RunLayout, monitor: str) -> None:
    """val_report.csv, grid_report.csv, history.csv and progress.png of one run."""
    layout.dir.mkdir(parents=True, exist_ok=True)
    _write_csv(val_report(fit, layout), layout.val_report, index=True)
    _write_csv(grid_report(fit, monitor), layout.grid_report)
    hist = fit.history.copy()
    hist.insert(2, "head_name", [fit.heads[i]["name"] for i in hist["head"]])
    _write_csv(hist, layout.history)
    progress_figure(fit, layout.progress)


def panel_groups(heads: list[dict], trained: set[int]) -> list[tuple[str, list[int]]]:
    """The figure's columns as (title, head indices): one per input norm for linear grids, one per head
    architecture for token grids (which have no norm), so lines of one column differ only in lr and decay."""
    by_norm = any("norm" in h for h in heads)
    labels = [f"norm={h.get('norm', 'raw')}" if by_norm else str(h["name"]) for h in heads]
    groups = []
    for label in dict.fromkeys(labels):
        members = [i for i, lab in enumerate(labels) if lab == label and i in trained]
        groups.append((f"{label} ({len(members)} head{'' if len(members) == 1 else 's'})", members))
    return groups


def progress_figure(fit: FitResult, path: Path) -> None:
    """Val loss, balanced accuracy and AUROC per grid point over epochs, one column per panel group (see
    :func:`panel_groups`).

    Lines are coloured by lr (log scale; C for logistic regression); each strategy's selected (head, epoch) is
    a thick line with a marker. One LineCollection per panel keeps a 104-head figure fast to draw.
    """
    # The figure API without pyplot: no backend switching or figure manager to import (a third of the time
    # of drawing this figure), and nothing global to close afterwards.
    from matplotlib import cm, colormaps, colors
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    hist = fit.history
    curves = {i: h.sort_values("epoch") for i, h in hist.groupby("head")}
    groups = panel_groups(fit.heads, set(curves))
    axis_name = "lr" if "lr" in fit.heads[0] else "C"
    values = np.array([h.get(axis_name, 1.0) for h in fit.heads], dtype=np.float64)
    positive = values[values > 0]
    low = positive.min() if len(positive) else 1.0
    cnorm = colors.LogNorm(vmin=low, vmax=max(values.max(), low * 1.0001))
    cmap = colormaps["viridis"]
    head_colour = cmap(cnorm(np.maximum(values, low)))  # [heads, 4], one call for all heads
    markers = ["*", "o", "s", "D", "^", "v", "P"]
    selected: dict[int, list[tuple[str, int]]] = {}
    for name, sel in fit.selections.items():
        selected.setdefault(sel.head, []).append((name, sel.epoch))
    fig = Figure(figsize=(5.5 * len(groups) + 1.5, 9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(METRIC_COLUMNS), len(groups), squeeze=False, sharex=True)
    single_epoch = hist["epoch"].nunique() <= 1
    for col, (title, heads) in enumerate(groups):
        for row, metric in enumerate(METRIC_COLUMNS):
            ax = axes[row][col]
            segs = [np.column_stack([curves[i]["epoch"], curves[i][metric]]) for i in heads]
            rgba = head_colour[heads]
            widths = [2.4 if i in selected else 0.7 for i in heads]
            if single_epoch:
                pts = np.concatenate(segs) if segs else np.zeros((0, 2))
                ax.scatter(pts[:, 0], pts[:, 1], c=rgba, s=12)
            else:
                ax.add_collection(LineCollection(segs, colors=rgba, linewidths=widths, alpha=0.6))
                ax.autoscale_view()
            for i in heads:
                for k, (strategy, epoch) in enumerate(selected.get(i, [])):
                    at = curves[i][curves[i]["epoch"] == epoch]
                    if not len(at):
                        continue
                    ax.plot(
                        epoch,
                        at[metric].iloc[0],
                        marker=markers[list(fit.selections).index(strategy) % len(markers)],
                        markersize=13 - 2.5 * k,
                        color="gold",
                        markeredgecolor="black",
                        linestyle="none",
                        zorder=10 + k,
                        label=f"{strategy}: {fit.heads[i]['name']} ep{epoch}",
                    )
            if row == 0:
                ax.set_title(title)
            if col == 0:
                ax.set_ylabel(metric)
            if row == len(METRIC_COLUMNS) - 1:
                ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes.ravel():
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    bottom = 0.08 + 0.025 * ((len(handles) + 1) // 2)
    fig.subplots_adjust(left=0.08, right=0.88, bottom=bottom, top=0.9, hspace=0.15, wspace=0.22)
    cax = fig.add_axes((0.91, bottom, 0.015, 0.9 - bottom))
    fig.colorbar(cm.ScalarMappable(norm=cnorm, cmap=cmap), cax=cax, label=axis_name).minorticks_off()
    fig.suptitle(f"val metrics per grid point ({len(fit.heads)} heads, {fit.epochs_run} epochs)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
