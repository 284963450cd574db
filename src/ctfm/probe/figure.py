"""The progress figure of a probe run, and a child process that draws it while the parent trains.

This module imports no torch: the child (``python -m ctfm.probe.figure``) starts in a moment and only imports
matplotlib, which it does while the parent is still loading data and training on another core.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctfm.core.fsutil import atomic_path

METRIC_COLUMNS = ("val_loss", "val_balanced_acc", "val_auroc")


@dataclass(frozen=True)
class Selected:
    """Where a checkpoint strategy's selection sits on the figure."""

    head: int
    epoch: int


@dataclass(frozen=True)
class FigureData:
    """What the figure shows of a run (a ``FitResult`` has these fields; this is what the child receives)."""

    heads: list[dict[str, Any]]
    history: pd.DataFrame
    selections: dict[str, Selected]
    epochs_run: int

    @classmethod
    def of(cls, fit: Any) -> FigureData:
        """The figure's part of a ``FitResult`` (without weights and logits)."""
        selections = {name: Selected(sel.head, sel.epoch) for name, sel in fit.selections.items()}
        return cls(fit.heads, fit.history, selections, fit.epochs_run)


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


def progress_figure(data: FigureData, path: Path) -> None:
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

    hist = data.history
    curves = {i: h.sort_values("epoch") for i, h in hist.groupby("head")}
    groups = panel_groups(data.heads, set(curves))
    axis_name = "lr" if "lr" in data.heads[0] else "C"
    values = np.array([h.get(axis_name, 1.0) for h in data.heads], dtype=np.float64)
    positive = values[values > 0]
    low = positive.min() if len(positive) else 1.0
    cnorm = colors.LogNorm(vmin=low, vmax=max(values.max(), low * 1.0001))
    cmap = colormaps["viridis"]
    head_colour = cmap(cnorm(np.maximum(values, low)))  # [heads, 4], one call for all heads
    markers = ["*", "o", "s", "D", "^", "v", "P"]
    selected: dict[int, list[tuple[str, int]]] = {}
    for name, sel in data.selections.items():
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
                        marker=markers[list(data.selections).index(strategy) % len(markers)],
                        markersize=13 - 2.5 * k,
                        color="gold",
                        markeredgecolor="black",
                        linestyle="none",
                        zorder=10 + k,
                        label=f"{strategy}: {data.heads[i]['name']} ep{epoch}",
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
    fig.suptitle(f"val metrics per grid point ({len(data.heads)} heads, {data.epochs_run} epochs)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)


class FigureWorker:
    """Draws progress figures in a child process started before training, so that importing matplotlib and
    drawing run on another core while this process loads data, trains and writes checkpoints (about half a
    second of a one-disease ``ctfm probe lp`` on an idle machine). ``draw`` hands a figure over, ``finish``
    waits for all of them; a figure the child could not draw is drawn here, so its error (if any) is raised
    here as it would be without the child."""

    def __init__(self) -> None:
        self._pending: list[tuple[FigureData, Path]] = []
        try:
            self._proc: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-m", "ctfm.probe.figure"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            self._proc = None

    def __enter__(self) -> FigureWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def draw(self, data: FigureData, path: Path) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            try:
                pickle.dump((data, Path(path)), self._proc.stdin)
                self._proc.stdin.flush()
                self._pending.append((data, Path(path)))
                return
            except (OSError, pickle.PicklingError):
                self.close()
        progress_figure(data, path)

    def finish(self) -> None:
        """Wait for every figure handed over (drawing here what the child did not)."""
        pending, self._pending = self._pending, []
        for data, path in pending:
            answer = b""
            if self._proc is not None and self._proc.stdout is not None:
                answer = self._proc.stdout.readline()
            if answer != b"ok\n":
                self.close()
                progress_figure(data, path)

    def close(self) -> None:
        """End the child: at once when it has nothing left to draw, else once it has drawn what it holds (it
        exits when its input closes)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        if not self._pending:
            proc.kill()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _serve() -> None:
    """The child: import matplotlib's figure machinery at once, then draw each figure it is sent."""
    import matplotlib.backends.backend_agg
    import matplotlib.collections
    import matplotlib.figure  # noqa: F401

    while True:
        try:
            data, path = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        try:
            progress_figure(data, path)
            sys.stdout.buffer.write(b"ok\n")
        except Exception:  # the parent draws it again and raises the error there
            sys.stdout.buffer.write(b"failed\n")
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    _serve()
