"""ROC and precision-recall figures of one scored head (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curves(
    labels: np.ndarray, probs: np.ndarray, multilabel: bool
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, binary target, score) per curve: the positive class for binary, one-vs-rest otherwise."""
    if multilabel:
        return [(f"label {j}", labels[:, j], probs[:, j]) for j in range(probs.shape[1])]
    if probs.shape[1] == 2:
        return [("positive class", (labels == 1).astype(int), probs[:, 1])]
    return [(f"class {c} vs rest", (labels == c).astype(int), probs[:, c]) for c in range(probs.shape[1])]


def save_roc_pr(
    labels: np.ndarray,
    probs: np.ndarray,
    roc_path: Path,
    pr_path: Path,
    multilabel: bool = False,
    title: str = "",
) -> list[Path]:
    """ROC and precision-recall figures (one curve per class one-vs-rest, per label, or the positive class)."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    plt = pyplot()
    curves = [(n, t, s) for n, t, s in _curves(labels, probs, multilabel) if 0 < t.sum() < len(t)]
    fig_roc, ax_roc = plt.subplots(figsize=(5, 5), dpi=100)
    fig_pr, ax_pr = plt.subplots(figsize=(5, 5), dpi=100)
    for name, target, score in curves:
        fpr, tpr, _ = roc_curve(target, score)
        ax_roc.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        prec, rec, _ = precision_recall_curve(target, score)
        ax_pr.step(rec, prec, where="post", label=f"{name} (AP {average_precision_score(target, score):.3f})")
    ax_roc.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax_roc.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"ROC {title}",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax_pr.set(
        xlabel="recall", ylabel="precision", title=f"Precision-recall {title}", xlim=(0, 1), ylim=(0, 1.02)
    )
    for ax in (ax_roc, ax_pr):
        if curves:
            ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8)
        else:
            ax.text(0.5, 0.5, "one class only: curve undefined", ha="center", va="center")
        ax.title.set_fontsize(9)
    roc_path.parent.mkdir(parents=True, exist_ok=True)
    fig_roc.tight_layout()
    fig_pr.tight_layout()
    fig_roc.savefig(roc_path)
    fig_pr.savefig(pr_path)
    plt.close(fig_roc)
    plt.close(fig_pr)
    return [roc_path, pr_path]
