"""Checkpoints in the reference trainers' own format, written beside ctfm's, so that the reference inference
scripts run unchanged on a ctfm probe folder (the shared benchmark facts give the format).

ctfm's ``checkpoints/<strategy>.pt`` stay the canonical files (``ctfm eval`` reads them: they also carry the
classes, the store checksum and the grid point); the files here hold the same tensors under the reference's
names, in ``<run>/reference_checkpoints/``:

* linear probing: one ``best_<strategy>_<score:.4f>_<head>_ep<N>.pth`` per strategy (the reference LP inference
  takes the highest epoch of each strategy, so one file each), payload ``state_dict``
  (``clfs.<head>.weight`` ``[C, D]``, ``clfs.<head>.bias`` ``[C]``), ``head_name``, ``val_metrics``, ``norm``
  (``raw``/``std``/``l2``/``ln``), ``betas``, ``eps`` and, for ``std`` heads, ``feat_mean``/``feat_std``
  ``[1, D]``;
* EAO: the ``val_balanced_acc`` selection (the reference EAO trainer keeps its best head by raw val balanced
  accuracy) as ``best_overall_balanced_acc<score:.4f>_<head>_ep<N>.pth``, payload ``state_dict`` keyed
  ``heads.<head>.<parameter of MultiLayersCrossAttentionPooling>``, ``head_name``, ``val_metrics``. Head names
  have no dots (``head_lr_1e_03``): the reference inference strips ``heads.<head>.`` by splitting on them. It
  builds the head from its own options (``--query_num 2 --num_heads 4 --num_layers 2 --ffn_mult 1`` by
  default), so a head trained with other ``ctfm probe eao`` options needs them passed there too.

Files are written whole (atomically) and loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ctfm.core.fsutil import atomic_path
from ctfm.probe.linear import NormStats

# The metric keys of the reference trainers' val_metrics (LP adds its two composite scores and the train loss).
EAO_VAL_KEYS = ("acc", "f1", "auroc", "ap", "sensitivity", "specificity", "balanced_acc", "loss")
LP_VAL_KEYS = (*EAO_VAL_KEYS, "val_balacc_auroc", "val_balacc_loss", "train_loss")


def lp_file_name(strategy: str, score: float, head: str, epoch: int) -> str:
    return f"best_{strategy}_{score:.4f}_{head}_ep{epoch}.pth"


def eao_file_name(balanced_acc: float, head: str, epoch: int) -> str:
    return f"best_overall_balanced_acc{balanced_acc:.4f}_{head}_ep{epoch}.pth"


def eao_head_name(lr: float) -> str:
    """The reference EAO trainer's name of its head of learning rate ``lr`` (e.g. ``head_lr_1e_03``)."""
    return f"head_lr_{lr:.0e}".replace("-", "_").replace(".", "_")


def _val_metrics(metrics: Mapping[str, float], keys: tuple[str, ...]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in keys if k in metrics}


def _save(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def save_lp(
    folder: Path,
    *,
    strategy: str,
    score: float,
    epoch: int,
    head: str,
    weight: np.ndarray,
    bias: np.ndarray,
    norm: NormStats,
    betas: tuple[float, float],
    eps: float,
    val_metrics: Mapping[str, float],
) -> Path:
    """One strategy's selected linear head as the reference LP trainer saves it."""
    payload = {
        "state_dict": {
            f"clfs.{head}.weight": torch.as_tensor(np.asarray(weight, dtype=np.float32)).clone(),
            f"clfs.{head}.bias": torch.as_tensor(np.asarray(bias, dtype=np.float32)).clone(),
        },
        "head_name": head,
        "val_metrics": _val_metrics(val_metrics, LP_VAL_KEYS),
        "norm": norm.type,
        "betas": (float(betas[0]), float(betas[1])),
        "eps": float(eps),
    }
    if norm.type == "std":  # as the reference: only std heads carry the train statistics, shaped [1, D]
        payload["feat_mean"] = torch.as_tensor(norm.mean, dtype=torch.float32).view(1, -1).clone()
        payload["feat_std"] = torch.as_tensor(norm.std, dtype=torch.float32).view(1, -1).clone()
    return _save(folder / lp_file_name(strategy, score, head, epoch), payload)


def save_eao(
    folder: Path,
    *,
    balanced_acc: float,
    epoch: int,
    head: str,
    state: Mapping[str, torch.Tensor],
    val_metrics: Mapping[str, float],
) -> Path:
    """An attention-pooling head (``state`` under the reference's parameter names) as the reference EAO trainer
    saves its best head."""
    if "." in head:
        raise ValueError(f"reference EAO head names cannot hold a dot: {head!r}")
    payload = {
        "state_dict": {f"heads.{head}.{k}": v for k, v in state.items()},
        "head_name": head,
        "val_metrics": _val_metrics(val_metrics, EAO_VAL_KEYS),
    }
    return _save(folder / eao_file_name(balanced_acc, head, epoch), payload)
