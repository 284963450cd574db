"""Training machinery shared by the linear grid and the EAO heads.

Everything here works on many heads at once: the sampler draws one batch of case indices that every head
trains on (as the reference trainer does with its single DataLoader), the schedules return one lr factor per
optimiser step, early stopping and the checkpoint strategies keep per-head state in arrays, and the validation
metrics are computed for all heads in one call.

The rules follow the reference protocol (shared benchmark facts): inverse-frequency sampling with replacement,
per-iteration cosine schedule with a linear warm-up from 1e-3, EMA early stopping counted from ``min_epoch``,
and five checkpoint strategies that each keep their own best (head, epoch) among the heads still training.
The EAO reference trainer's variants (scaled sample weights, constant lr, raw metric) are options of the same
rules, chosen by ``configs/benchmark.yaml``.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import ConfigError
from ctfm.core.metrics import class_probabilities, reference_metrics

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("none", "cosine", "onecycle")
SAMPLINGS = ("weighted", "weighted-scaled", "loss-weight", "none")
# The reference EAO trainer min-max scales its inverse-frequency sample weights to this range.
SCALED_WEIGHT_RANGE = (0.1, 1.0)
# Checkpoint strategies: name -> (mode, score from a dict of per-head metric arrays).
STRATEGIES: dict[str, tuple[str, Callable[[dict[str, np.ndarray]], np.ndarray]]] = {
    "val_balanced_acc": ("max", lambda m: m["val_balanced_acc"]),
    "val_auroc": ("max", lambda m: m["val_auroc"]),
    "val_loss": ("min", lambda m: m["val_loss"]),
    "val_balacc_auroc": ("max", lambda m: 0.5 * m["val_balanced_acc"] + 0.5 * m["val_auroc"]),
    "val_balacc_loss": ("max", lambda m: 0.5 * m["val_balanced_acc"] - 0.5 * m["val_loss"]),
}
# Early stopping can monitor any strategy's score (the reference default: val loss).
MONITORS = tuple(STRATEGIES)
SGD_MOMENTUM = 0.9
WARMUP_START_FACTOR = 1e-3


@dataclass
class TrainConfig:
    """One training run's rules. Defaults are the reference protocol; ``from_benchmark`` reads them from config."""

    epochs: int = 150
    batch_size: int = 128
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_epochs: float = 5.0
    sampling: str = "weighted"
    monitor: str = "val_loss"
    ema_decay: float = 0.9
    patience: int = 10
    min_epoch: int = 6
    seed: int = 42
    device: str = "auto"
    strategies: tuple[str, ...] = tuple(STRATEGIES)
    # CPU threads of the linear grid: its per-step products are small, so one thread avoids oversubscription
    # (measured 10x faster than two on a busy 2-core machine); 0 keeps torch's default. The EAO grid's
    # products are larger and always use torch's default (two threads: 60 against 94 ms a step, measured).
    threads: int = 1

    @classmethod
    def from_benchmark(cls, section: str = "linear_probe", **overrides: Any) -> TrainConfig:
        """Defaults from ``configs/benchmark.yaml`` (``section``), then ``overrides`` (None values ignored)."""
        conf = load_benchmark().section(section)
        names = {f.name for f in fields(cls)}
        values = {k: conf[k] for k in names if k in conf}
        if "strategies" in values:
            values["strategies"] = tuple(values["strategies"])
        values.update({k: v for k, v in overrides.items() if v is not None and k in names})
        unknown = set(overrides) - names
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(**values).validated()

    def validated(self) -> TrainConfig:
        """Check every option against its allowed values; raises :class:`ConfigError` naming the option."""
        for name, value, allowed in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("schedule", self.schedule, SCHEDULES),
            ("sampling", self.sampling, SAMPLINGS),
            ("monitor", self.monitor, MONITORS),
        ):
            if value not in allowed:
                raise ConfigError(f"--{name} {value!r} is not one of {', '.join(allowed)}")
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad:
            raise ConfigError(f"unknown checkpoint strategy {bad}; known: {', '.join(STRATEGIES)}")
        for name, least in _AT_LEAST.items():
            if getattr(self, name) < least:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be at least {least}, not {getattr(self, name)}"
                )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("--ema must be in [0, 1)")
        if self.epochs < self.min_epoch:
            raise ConfigError(
                f"--epochs {self.epochs} is below --min-epoch {self.min_epoch}: no epoch could be selected, so no "
                "checkpoint would be written; raise --epochs or lower --min-epoch"
            )
        return self

    def with_seed(self, seed: int) -> TrainConfig:
        return replace(self, seed=seed)


# glibc's mallopt parameters, and the limits set for training (see `reuse_freed_memory`).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's own ceiling for its dynamic threshold
_TRIM_THRESHOLD_BYTES = 256 << 20

# Smallest allowed value of each numeric training option.
_AT_LEAST = {"epochs": 1, "batch_size": 1, "patience": 1, "warmup_epochs": 0, "min_epoch": 0, "threads": 0}


@contextmanager
def torch_threads(device: torch.device, threads: int) -> Iterator[None]:
    """Temporarily set torch's CPU thread count (restored afterwards); no-op on GPU or for 0."""
    if device.type != "cpu" or threads <= 0:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@functools.cache
def reuse_freed_memory() -> bool:
    """Make glibc keep freed blocks (up to 32 MiB each, 256 MiB in all) for reuse instead of unmapping them.

    Every training step frees its gradients and activations and then allocates the same sizes again. With
    glibc's defaults the freed top of the heap is trimmed back to the OS, so each step faults in and zeroes
    fresh pages: 4,400-8,700 page faults a step for the default 9-member EAO grid, and its median step went
    from 51-63 ms to 38-45 ms without them (measured here). Process-wide and one-way, like choosing another
    allocator; a no-op off glibc. Returns whether it was applied.
    """
    try:
        if "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""):
            return False
    except (AttributeError, ValueError, OSError):  # no confstr, or no such name: not glibc
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) == 1
    return mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1 and applied


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (weight init and sampling use their own seeded generators too)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def class_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse class frequency, scaled like scikit-learn's ``balanced`` weights (absent classes count as 1)."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    counts[counts == 0] = 1.0
    return len(y) / (num_classes * counts)


class BatchSampler:
    """The train batches of one epoch, shared by every head.

    ``weighted``: ``len(y)`` draws with replacement, probability inverse to class frequency (uniform draws with
    replacement when the classes are balanced): the very batches of the reference's ``DataLoader`` over a
    ``WeightedRandomSampler`` (``RandomSampler``) with a generator seeded with ``seed``.
    ``weighted-scaled``: the same, with the weights min-max scaled to ``SCALED_WEIGHT_RANGE`` as the reference
    EAO trainer does (the rarest class is drawn 10x as often per case as the commonest, whatever the imbalance).
    ``loss-weight`` and ``none``: a fresh permutation each epoch (the loss carries the class weights for
    ``loss-weight``). The last short batch is dropped when the train set holds at least one full batch.
    """

    def __init__(self, y: np.ndarray, batch_size: int, sampling: str, seed: int, num_classes: int) -> None:
        self.n = len(y)
        self.batch_size = min(batch_size, self.n)
        self.drop_last = self.n >= batch_size
        self.sampling = sampling
        self.generator = torch.Generator().manual_seed(seed)
        weights = class_weights(y, num_classes)[y]
        if sampling == "weighted-scaled" and weights.max() > weights.min():
            low, high = SCALED_WEIGHT_RANGE
            weights = low + (high - low) * (weights - weights.min()) / (weights.max() - weights.min())
        # float32 first, as the reference hands its weights to WeightedRandomSampler: the draws then match its
        self.sample_weights = torch.as_tensor(weights, dtype=torch.float32).double()
        self.uniform = bool(np.isclose(weights.max(), weights.min()))

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def epoch(self) -> list[torch.Tensor]:
        weighted = self.sampling.startswith("weighted")
        if weighted and not self.uniform:
            order = torch.multinomial(self.sample_weights, self.n, replacement=True, generator=self.generator)
        elif weighted:
            order = torch.randint(self.n, (self.n,), generator=self.generator)
        else:
            order = torch.randperm(self.n, generator=self.generator)
        return [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(self.steps_per_epoch)]


@dataclass(frozen=True)
class Schedule:
    """Per-step lr factors (multiplying each head's base lr) and, for one-cycle, the cycled AdamW beta1."""

    lr_factor: np.ndarray
    beta1: np.ndarray | None = None


def _cos_anneal(start: float, end: float, pct: np.ndarray) -> np.ndarray:
    return end + (start - end) / 2.0 * (np.cos(np.pi * pct) + 1.0)


def build_schedule(name: str, epochs: int, steps_per_epoch: int, warmup_epochs: float = 5.0) -> Schedule:
    """The reference's per-iteration schedules in closed form.

    ``cosine``: linear warm-up from 1e-3 to 1 over ``warmup_epochs`` then cosine to 0; ``onecycle``: PyTorch's
    OneCycleLR defaults (30 % rise, max/25 start, max/25e4 end, beta1 cycled 0.95 -> 0.85 -> 0.95).
    """
    total = epochs * steps_per_epoch
    steps = np.arange(total, dtype=np.float64)
    if name == "none":
        return Schedule(np.ones(total))
    if name == "cosine":
        warm = round(warmup_epochs * steps_per_epoch)
        if warm <= 0:
            return Schedule(0.5 * (1 + np.cos(np.pi * steps / max(1, total))))
        t_max = max(1, total - warm)
        rise = WARMUP_START_FACTOR + (1 - WARMUP_START_FACTOR) * np.minimum(steps, warm) / warm
        fall = 0.5 * (1 + np.cos(np.pi * (steps - warm) / t_max))
        return Schedule(np.where(steps < warm, rise, fall))
    if name == "onecycle":
        up_end = float(0.3 * total) - 1
        down_end = float(total - 1)
        up = steps <= up_end
        pct_up = steps / max(up_end, 1e-12)
        pct_down = (steps - up_end) / max(down_end - up_end, 1e-12)
        initial, final = 1 / 25.0, 1 / 25.0 / 1e4
        lr = np.where(up, _cos_anneal(initial, 1.0, pct_up), _cos_anneal(1.0, final, pct_down))
        beta1 = np.where(up, _cos_anneal(0.95, 0.85, pct_up), _cos_anneal(0.85, 0.95, pct_down))
        return Schedule(lr, beta1)
    raise ConfigError(f"--schedule {name!r} is not one of {', '.join(SCHEDULES)}")


class EarlyStopping:
    """Per-head early stopping on an EMA of the monitored metric, vectorised over heads.

    The EMA starts at the first value; a head's patience counter resets on a strict improvement of its EMA and
    otherwise grows from ``min_epoch`` on; the head stops at ``patience`` (epochs are 1-based).
    """

    def __init__(self, n_heads: int, mode: str, decay: float, patience: int, min_epoch: int) -> None:
        self.sign = 1.0 if mode == "max" else -1.0
        self.decay, self.patience, self.min_epoch = decay, patience, min_epoch
        self.ema = np.full(n_heads, np.nan)
        self.best = np.full(n_heads, -np.inf)  # in sign-adjusted units: larger is better
        self.bad = np.zeros(n_heads, dtype=np.int64)
        self.stopped = np.zeros(n_heads, dtype=bool)
        self.stopped_epoch = np.zeros(n_heads, dtype=np.int64)

    def update(self, epoch: int, heads: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Feed this epoch's metric for ``heads`` (still training); returns the heads that stop now."""
        values = np.asarray(values, dtype=np.float64)
        prev = self.ema[heads]
        ema = np.where(np.isnan(prev), values, self.decay * prev + (1 - self.decay) * values)
        self.ema[heads] = ema
        improved = self.sign * ema > self.best[heads]
        self.best[heads] = np.where(improved, self.sign * ema, self.best[heads])
        counting = epoch >= self.min_epoch
        self.bad[heads] = np.where(improved, 0, self.bad[heads] + (1 if counting else 0))
        stop = heads[(self.bad[heads] >= self.patience) & counting]
        self.stopped[stop] = True
        self.stopped_epoch[stop] = epoch
        return stop


@dataclass
class Selection:
    """One checkpoint strategy's choice: its best (head, epoch), that head's weights then and its val metrics."""

    strategy: str
    head: int
    epoch: int
    score: float
    state: dict[str, np.ndarray] = field(repr=False)
    val_logits: np.ndarray = field(repr=False)
    metrics: dict[str, float] = field(default_factory=dict)


class StrategyTracker:
    """Keeps each checkpoint strategy's best (head, epoch) among the heads still training, from ``min_epoch``.

    Ties go to the earlier epoch, then to the lower head index (the grid order), as in the reference.
    """

    def __init__(self, strategies: Sequence[str], min_epoch: int) -> None:
        self.strategies = list(strategies)
        self.min_epoch = min_epoch
        self.best: dict[str, Selection] = {}

    def update(
        self,
        epoch: int,
        heads: np.ndarray,
        metrics: dict[str, np.ndarray],
        snapshot: Callable[[int], tuple[dict[str, np.ndarray], np.ndarray]],
    ) -> list[str]:
        """``heads`` are grid indices aligned with the metric arrays; ``snapshot(i)`` copies the i-th head's
        state and val logits. Returns the strategies that improved."""
        if epoch < self.min_epoch or len(heads) == 0:
            return []
        improved = []
        for name in self.strategies:
            mode, score_fn = STRATEGIES[name]
            signed = score_fn(metrics) * (1.0 if mode == "max" else -1.0)
            signed = np.where(np.isnan(signed), -np.inf, signed)
            top = signed.max()
            if not np.isfinite(top):
                continue
            i = int(np.flatnonzero(signed == top)[np.argmin(heads[signed == top])])
            current = self.best.get(name)
            if current is not None and not top > (1.0 if mode == "max" else -1.0) * current.score:
                continue
            state, logits = snapshot(i)
            score = float(score_fn(metrics)[i])
            self.best[name] = Selection(name, int(heads[i]), epoch, score, state, logits)
            improved.append(name)
        return improved


# ----------------------------------------------------------------------------- metrics


def loss_per_head(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per head: logits ``[H, N, C]``, targets ``[N]`` -> ``[H]``."""
    logp = torch.log_softmax(logits, dim=-1)
    return -logp.gather(2, y.view(1, -1, 1).expand(logits.shape[0], -1, 1))[..., 0].mean(1)


def batched_metrics(y: np.ndarray, logits: np.ndarray, loss: np.ndarray) -> dict[str, np.ndarray]:
    """The selection metrics per head: the given val loss, and the reference's balanced accuracy and AUROC
    (:func:`ctfm.core.metrics.reference_metrics`) of logits ``[H, N, C]``; ``y`` holds class indices."""
    logits = np.asarray(logits)
    m = reference_metrics(np.broadcast_to(y, logits.shape[:2]), class_probabilities(logits), logits.shape[-1])
    return {
        "val_loss": np.asarray(loss, dtype=np.float64),
        "val_balanced_acc": np.asarray(m["balanced_acc"]),
        "val_auroc": np.asarray(m["auroc"]),
    }


def full_metrics(y: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Every val metric of one head as the reference trainer records it (its val_metrics / val_report.csv):
    the reference's seven metrics (:func:`ctfm.core.metrics.reference_metrics`), the cross-entropy and the
    two composite scores of the ``val_balacc_auroc`` and ``val_balacc_loss`` strategies."""
    y, logits = np.asarray(y), np.asarray(logits, dtype=np.float32)
    out = {
        k: float(v) for k, v in reference_metrics(y, class_probabilities(logits), logits.shape[-1]).items()
    }
    out["loss"] = float(loss_per_head(torch.as_tensor(logits[None]), torch.as_tensor(y))[0])
    out["val_balacc_auroc"] = 0.5 * out["balanced_acc"] + 0.5 * out["auroc"]
    out["val_balacc_loss"] = 0.5 * out["balanced_acc"] - 0.5 * out["loss"]
    return out


# ----------------------------------------------------------------------------- results


@dataclass
class FitResult:
    """What one training run produced, whatever the head type.

    ``heads``: one dict per grid point (``name`` plus its hyper-parameters), in grid order. ``history``: one row
    per (epoch, head still training) with train/val loss, val metrics and the EMA. ``stopped_epoch``: per head,
    0 when it never stopped early.
    """

    heads: list[dict[str, Any]]
    selections: dict[str, Selection]
    history: pd.DataFrame
    stopped_epoch: np.ndarray
    epochs_run: int
    seconds: float
    classes: list[int]
    num_train: int
    num_val: int
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: per strategy, the selected head, epoch and val metrics."""
        return {
            name: {
                "head": self.heads[sel.head]["name"],
                "head_index": sel.head,
                "epoch": sel.epoch,
                "score": sel.score,
                **{k: v for k, v in self.heads[sel.head].items() if k != "name"},
                "val_metrics": sel.metrics,
            }
            for name, sel in self.selections.items()
        }


def finish_selections(selections: dict[str, Selection], y_val: np.ndarray) -> None:
    """Compute the full val metrics of each selected (head, epoch) from its saved val logits."""
    for sel in selections.values():
        sel.metrics = full_metrics(y_val, sel.val_logits)


def history_frame(records: list[dict[str, np.ndarray]]) -> pd.DataFrame:
    """Concatenate per-epoch column dicts (same keys) into one long table."""
    if not records:
        return pd.DataFrame()
    return pd.DataFrame({k: np.concatenate([r[k] for r in records]) for k in records[0]})


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample std (ddof=1; 0 for a single run) of repeated runs, ignoring NaN."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": int(arr.size)}
