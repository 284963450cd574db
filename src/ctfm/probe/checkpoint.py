"""Probe checkpoints: one ``torch.save``d dict carrying everything inference needs, and the predictor.

Keys: ``kind`` (lp | eao), ``head`` {name, kwargs} rebuilt with :func:`ctfm.probe.heads.build_head`,
``state_dict``, ``norm`` {type, mean, std}, ``grid_point``, ``feature_dim``, ``classes``, ``disease``,
``strategy``, ``store`` {model, task, view, manifest_checksum}, ``val_metrics``, ``seed``, ``ctfm_version``
(plus optional ``extra``). Loading uses ``weights_only=True``: a checkpoint can never run code.

Example:
    >>> predictor = load_predictor(Path("probes/m/fatty_liver/checkpoints/val_auroc.pt"))  # doctest: +SKIP
    >>> predictor.predict_logits(x).shape  # doctest: +SKIP
    (200, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ctfm import __version__
from ctfm.core.errors import DataError
from ctfm.core.fsutil import atomic_path
from ctfm.probe.data import DiseaseData
from ctfm.probe.heads import build_head
from ctfm.probe.layout import RunLayout
from ctfm.probe.linear import NormStats
from ctfm.probe.tokens import TokenReader, eval_batches
from ctfm.probe.training import FitResult, Selection, TrainConfig

KINDS = ("lp", "eao")
REQUIRED = ("kind", "head", "state_dict", "norm", "feature_dim", "classes")


def save_checkpoint(
    path: Path,
    *,
    kind: str,
    head_name: str,
    head_kwargs: dict[str, Any],
    state_dict: dict[str, Any],
    norm: dict[str, Any],
    grid_point: dict[str, Any],
    feature_dim: int,
    classes: Sequence[int],
    disease: str,
    strategy: str,
    store: dict[str, str],
    val_metrics: dict[str, float],
    seed: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (an interrupted save never leaves a half file)."""
    if kind not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}, not {kind!r}")
    payload = {
        "kind": kind,
        "head": {"name": head_name, "kwargs": dict(head_kwargs)},
        "state_dict": {k: torch.as_tensor(np.asarray(v)).clone() for k, v in state_dict.items()},
        "norm": dict(norm),
        "grid_point": dict(grid_point),
        "feature_dim": int(feature_dim),
        "classes": [int(c) for c in classes],
        "disease": disease,
        "strategy": strategy,
        "store": dict(store),
        "val_metrics": {k: float(v) for k, v in val_metrics.items()},
        "seed": int(seed),
        "ctfm_version": __version__,
        "extra": dict(extra or {}),
    }
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def save_selection(
    layout: RunLayout,
    name: str,
    sel: Selection,
    data: DiseaseData,
    config: TrainConfig,
    fit: FitResult,
    *,
    kind: str,
    head_name: str,
    head_kwargs: dict[str, Any],
    state_dict: dict[str, Any],
    norm: dict[str, Any],
) -> None:
    """Save strategy ``name``'s selected head with the provenance shared by every probe kind."""
    save_checkpoint(
        layout.checkpoint(name),
        kind=kind,
        head_name=head_name,
        head_kwargs=head_kwargs,
        state_dict=state_dict,
        norm=norm,
        grid_point=fit.heads[sel.head],
        feature_dim=data.feature_dim,
        classes=fit.classes,
        disease=data.disease,
        strategy=name,
        store=data.store_key,
        val_metrics=sel.metrics,
        seed=config.seed,
        extra={"epoch": sel.epoch, "head_index": sel.head, "monitor": config.monitor},
    )


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The raw checkpoint dict; :class:`DataError` naming the file when it is not a ctfm checkpoint."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise DataError(f"{path}: not a readable ctfm checkpoint ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in REQUIRED if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise DataError(f"{path}: not a ctfm checkpoint (missing {', '.join(missing)})")
    return payload


@dataclass
class Predictor:
    """A loaded head with its input normalisation; ``meta`` is the checkpoint minus the weights."""

    head: nn.Module
    norm: NormStats
    meta: dict[str, Any]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def classes(self) -> list[int]:
        return list(self.meta["classes"])

    @torch.no_grad()
    def predict_logits(self, x: Any) -> np.ndarray:
        """Logits ``[N, C]`` (a single-logit binary head of an older ctfm checkpoint is returned as ``[0, z]``:
        softmax = sigmoid)."""
        kind = self.meta["kind"]
        if kind not in _PREDICT:
            raise DataError(f"no predictor for checkpoint kind {kind!r}")
        return _PREDICT[kind](self, x)


def as_class_logits(z: np.ndarray) -> np.ndarray:
    """One logit per class: ``[N, 1]`` binary logits (ctfm's checkpoints before heads had one logit per class)
    become ``[N, 2]`` = ``[0, z]``."""
    return np.concatenate([np.zeros_like(z), z], axis=1) if z.shape[1] == 1 else z


def _predict_vectors(predictor: Predictor, x: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    arr = np.stack([np.asarray(v) for v in x]) if isinstance(x, list | tuple) else np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] != predictor.meta["feature_dim"]:
        raise DataError(
            f"embeddings of shape {arr.shape} do not fit a probe trained on D={predictor.meta['feature_dim']}"
        )
    t = torch.as_tensor(arr, dtype=torch.float32, device=predictor.device)
    z = predictor.head(predictor.norm.apply(t)).cpu().numpy().astype(np.float64)
    return as_class_logits(z)


def _as_tokens(x: np.ndarray, dim: int) -> np.ndarray:
    """One case as tokens [n, D]: accepts [n, D] or a reference ``y_hat`` map [D, h, w, l]."""
    a = np.asarray(x)
    if a.ndim == 4 and a.shape[0] == dim:
        a = a.reshape(dim, -1).T
    if a.ndim != 2 or a.shape[1] != dim:
        raise DataError(f"tokens of shape {a.shape} do not fit an EAO head trained on D={dim}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _predict_tokens(predictor: Predictor, x: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """Logits [N, C] for a list of cases (tokens [n_i, D] or maps [D, h, w, l]), padded in batches."""
    cases = [_as_tokens(c, int(predictor.meta["feature_dim"])) for c in x]
    if not cases:
        return np.zeros((0, len(predictor.meta["classes"])))
    tokens, offsets = np.concatenate(cases), np.cumsum([0] + [len(c) for c in cases])
    reader = TokenReader(tokens, offsets)
    out = np.zeros((len(cases), len(predictor.meta["classes"])))
    predictor.head.eval()
    for rows in eval_batches(np.arange(len(cases)), reader.lengths, batch_size):
        b = reader.batch(rows)
        z = predictor.head(*b.on(predictor.device))
        out[rows] = z.float().cpu().numpy()
    return out


PredictFn = Callable[[Predictor, Any], np.ndarray]
_PREDICT: dict[str, PredictFn] = {
    "lp": _predict_vectors,
    "eao": _predict_tokens,
}  # logits per checkpoint kind


def load_predictor(path: Path, device: str = "cpu") -> Predictor:
    """Rebuild the head of a checkpoint on ``device`` with its norm statistics."""
    payload = read_checkpoint(path)
    dev = torch.device(device)
    head = build_head(payload["head"]["name"], **payload["head"]["kwargs"])
    try:
        head.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise DataError(f"{path}: weights do not fit head {payload['head']['name']!r} ({exc})") from exc
    head.to(dev).eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return Predictor(head=head, norm=NormStats.from_dict(payload["norm"]), meta=meta, device=dev)
