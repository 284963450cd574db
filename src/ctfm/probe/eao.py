"""Task 2 (EAO) probing: token heads trained on the store's packed token cache.

Tokens are read batch by batch from the memory-mapped cache (:mod:`ctfm.probe.tokens`); every grid member
(head architecture x learning rate) is fed the same batch in the same step, the members of one architecture
as one stacked module (:mod:`ctfm.probe.eao_grid`). This module plans memory, runs the training loop with
the rules shared with task 1, and saves and serves the checkpoints.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ctfm.core.device import resolve_device
from ctfm.core.errors import ConfigError
from ctfm.core.progress import NO_PROGRESS, Progress, tracked
from ctfm.probe import training
from ctfm.probe.checkpoint import save_selection
from ctfm.probe.data import DiseaseData, load_disease
from ctfm.probe.eao_grid import GridMember, HeadGrid, HeadSpec, graph_length
from ctfm.probe.eao_heads import attn_pool_reference_state
from ctfm.probe.heads import build_head
from ctfm.probe.layout import RunLayout
from ctfm.probe.linear import encode_labels
from ctfm.probe.options import ProbeOptions
from ctfm.probe.reference import eao_head_name, save_eao
from ctfm.probe.runner import ProbeTask
from ctfm.probe.tokens import TokenReader, bucketed_batches
from ctfm.probe.training import FitResult, TrainConfig

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------
# Memory planning


def mem_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable from /proc/meminfo (None where the file does not exist, e.g. macOS)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_bytes(device: torch.device) -> int | None:
    """Memory the heads can use: free GPU memory on CUDA (they live there), else the host's MemAvailable."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return mem_available_bytes()


def _member_activation_floats(spec: HeadSpec, batch: int, tokens: int, dim: int) -> float:
    """Rough float count a head keeps for backward on one [batch, tokens, dim] batch."""
    bt = batch * tokens
    if spec.name == "attn-pool":
        q = int(spec.kwargs.get("num_queries", 2)) * int(spec.kwargs.get("num_heads", 4))
        layers = int(spec.kwargs.get("num_layers", 2))
        return layers * (3 * bt * q + batch * q * dim * 8)
    if spec.name == "abmil":
        hidden = int(spec.kwargs.get("hidden", 128))
        return 6 * bt * hidden
    return 2 * bt + batch * dim * 4


def _param_count(spec: HeadSpec, dim: int, num_classes: int) -> int:
    with torch.device("meta"):
        module = build_head(spec.name, **spec.full_kwargs(dim, num_classes))
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes the training needs (one padded batch, grid parameters + optimiser state, activations, and on a
    GPU the gradients and activations each captured CUDA graph keeps)."""

    batch_bytes: int
    params_bytes: int
    activation_bytes: int
    cache_bytes: int
    available: int | None
    graph_bytes: int = 0

    @property
    def total(self) -> int:
        return self.batch_bytes + self.params_bytes + self.activation_bytes + self.graph_bytes

    @property
    def fits(self) -> bool:
        return self.available is None or self.total <= 0.8 * self.available

    def describe(self) -> str:
        avail = "unknown" if self.available is None else _gb(self.available)
        return (
            f"needs about {_gb(self.total)} (batch {_gb(self.batch_bytes)}, heads+optimiser "
            f"{_gb(self.params_bytes)}, activations {_gb(self.activation_bytes)}"
            f"{f', CUDA graphs {_gb(self.graph_bytes)}' if self.graph_bytes else ''}); token cache "
            f"{_gb(self.cache_bytes)} on disk, read batch by batch; available {avail}"
        )


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


EVAL_BATCH_TOKENS = 16384


def eval_batch(batch_size: int, longest: int, eval_batch_size: int | None = None) -> int:
    """Validation batch size: as given, else as many cases of ``longest`` tokens as make
    ``EVAL_BATCH_TOKENS`` tokens, and at least 4x the training batch. No gradients are kept, and fewer,
    larger batches read each member's weights fewer times per epoch."""
    return eval_batch_size or max(4 * batch_size, EVAL_BATCH_TOKENS // max(1, longest))


def plan_memory(
    specs: Sequence[HeadSpec],
    n_lrs: int,
    reader: TokenReader,
    batch_size: int,
    num_classes: int,
    available: int | None = None,
    eval_batch_size: int | None = None,
    graphed: bool = False,
) -> MemoryPlan:
    """Estimate peak memory of an EAO run before it starts (the longest cases fill the biggest batch).

    ``graphed``: each captured batch shape (padded length, and a smaller last batch) keeps its own
    gradients and activations, counted at the longest length."""
    longest = reader.longest
    b = min(batch_size, len(reader))
    dim = reader.dim
    largest = min(max(b, eval_batch(batch_size, longest, eval_batch_size)), len(reader))
    batch_bytes = 3 * 4 * largest * longest * dim  # raw read buffer, float32 tensor, normalised copy
    params = sum(_param_count(s, dim, num_classes) for s in specs) * n_lrs
    acts = sum(_member_activation_floats(s, b, longest, dim) for s in specs) * n_lrs
    cache = int(reader.tokens.nbytes)
    shapes = 2 * len({graph_length(int(t), longest) for t in np.unique(reader.lengths)}) if graphed else 0
    return MemoryPlan(
        batch_bytes=int(batch_bytes),
        params_bytes=int(params * 4 * 4),  # weights, grads, two Adam moments
        activation_bytes=int(acts * 4),
        cache_bytes=cache,
        available=mem_available_bytes() if available is None else available,
        graph_bytes=int(shapes * (params + acts) * 4),
    )


def check_memory(plan: MemoryPlan) -> None:
    """Refuse a run that would not fit in memory, saying what it needs and what to change."""
    if not plan.fits:
        raise ConfigError(
            f"EAO training {plan.describe()}: that does not fit in 80% of the available memory; "
            "lower --batch-size or train fewer --head / --lr values per run"
        )


# ----------------------------------------------------------------------------------------------------------
# Training


def cuda_graphed(device: torch.device, config: TrainConfig, enabled: bool = True) -> bool:
    """Whether the training steps replay as CUDA graphs: on a GPU, for the constant schedule (``none``, the
    reference's) whose lr the graphs capture; other schedules change it every step."""
    return enabled and device.type == "cuda" and config.schedule == "none"


@dataclass
class EAOData:
    """Rows of the packed cache (and class indices) for one fit: train and val."""

    reader: TokenReader
    train_rows: np.ndarray
    y_train: np.ndarray
    val_rows: np.ndarray
    y_val: np.ndarray
    classes: list[int]


def fit_eao(
    data: EAOData,
    specs: Sequence[HeadSpec],
    lrs: Sequence[float],
    config: TrainConfig,
    weight_decay: float = 0.0,
    eval_batch_size: int | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
    cuda_graphs: bool = True,
) -> FitResult:
    """Train every (head x lr) member on the same batches with the shared rules of ``training.py``.

    Per member: EMA early stopping on ``config.monitor``; per checkpoint strategy: the best (member, epoch)
    among the members still training. ``on_epoch(epoch, active_members)`` reports progress. ``cuda_graphs``:
    replay the steps as CUDA graphs where :func:`cuda_graphed` allows (the same steps, ~8x faster). On glibc
    it sets the process's allocator to keep freed blocks for reuse
    (:func:`~ctfm.probe.training.reuse_freed_memory`).
    """
    start = time.perf_counter()
    training.seed_everything(config.seed)
    device = resolve_device(config.device)
    training.reuse_freed_memory()
    num_classes = len(data.classes)
    grid = HeadGrid(
        specs, lrs, data.reader.dim, num_classes, config.seed, weight_decay, config.optimizer, device=device
    )
    graphed = cuda_graphed(device, config, cuda_graphs)
    if graphed:
        grid.use_cuda_graphs(data.reader.longest)
    sampler = training.BatchSampler(
        data.y_train, config.batch_size, config.sampling, config.seed, num_classes
    )
    schedule = training.build_schedule(
        config.schedule, config.epochs, sampler.steps_per_epoch, config.warmup_epochs
    )
    weight = None
    if config.sampling == "loss-weight":
        weights = training.class_weights(data.y_train, num_classes)
        weight = torch.as_tensor(weights, dtype=torch.float32).to(device)
    mode = training.STRATEGIES[config.monitor][0]
    stopper = training.EarlyStopping(len(grid), mode, config.ema_decay, config.patience, config.min_epoch)
    tracker = training.StrategyTracker(config.strategies, config.min_epoch)
    rng = np.random.default_rng(config.seed)
    y_train_t = torch.as_tensor(data.y_train, dtype=torch.long)
    y_val_t = torch.as_tensor(data.y_val, dtype=torch.long)
    eval_bs = eval_batch(config.batch_size, data.reader.longest, eval_batch_size)
    records: list[dict[str, np.ndarray]] = []
    step, epoch = 0, 0
    for epoch in range(1, config.epochs + 1):
        heads = np.array([m.index for m in grid.active], dtype=np.int64)
        if heads.size == 0:
            epoch -= 1
            break
        order = torch.cat(sampler.epoch()).numpy()
        running: dict[int, torch.Tensor] = {}
        batches = bucketed_batches(order, data.reader.lengths[data.train_rows], sampler.batch_size, rng)
        for idx in batches:
            beta1 = None if schedule.beta1 is None else float(schedule.beta1[step])
            grid.set_schedule(float(schedule.lr_factor[step]), beta1)
            losses = grid.train_step(data.reader.batch(data.train_rows[idx]), y_train_t[idx], weight)
            for i, loss in losses.items():
                running[i] = running[i] + loss if i in running else loss
            step += 1
        train_loss = np.array([float(running[int(h)]) / len(batches) for h in heads])
        logits = grid.logits(data.reader, data.val_rows, eval_bs)  # aligned with `heads`
        val_loss = training.loss_per_head(torch.from_numpy(logits), y_val_t).numpy()
        metrics = training.batched_metrics(data.y_val, logits, val_loss)
        stopped = stopper.update(epoch, heads, training.STRATEGIES[config.monitor][1](metrics))
        records.append(
            {
                "epoch": np.full(len(heads), epoch),
                "head": heads,
                "train_loss": train_loss,
                **{k: np.asarray(v, dtype=np.float64) for k, v in metrics.items()},
                "monitor_ema": stopper.ema[heads],
            }
        )
        # As in the linear trainer, a member is not a checkpoint candidate at the epoch it stops.
        still = np.flatnonzero(~np.isin(heads, stopped))
        tracker.update(
            epoch,
            heads[still],
            {k: np.asarray(v)[still] for k, v in metrics.items()},
            lambda i, h=heads[still], lg=logits[still]: (grid.state_of(int(h[i])), lg[i]),
        )
        grid.stop(stopped)
        if on_epoch is not None:
            on_epoch(epoch, len(grid.active))
    training.finish_selections(tracker.best, data.y_val)
    return FitResult(
        heads=[_head_point(m) for m in grid.members],
        selections=tracker.best,
        history=training.history_frame(records),
        stopped_epoch=stopper.stopped_epoch,
        epochs_run=epoch,
        seconds=time.perf_counter() - start,
        classes=list(data.classes),
        num_train=len(data.train_rows),
        num_val=len(data.val_rows),
        extra={
            "head_specs": [{"name": m.spec.name, "kwargs": dict(m.spec.kwargs)} for m in grid.members],
            "device": str(device),
            "cuda_graphs": graphed,
        },
    )


def _head_point(m: GridMember) -> dict:
    return {"name": m.spec.name, **m.spec.kwargs, "lr": m.lr, "weight_decay": m.weight_decay}


# ----------------------------------------------------------------------------------------------------------
# Checkpoints


REFERENCE_STRATEGY = (
    "val_balanced_acc"  # the reference EAO trainer keeps its best head by val balanced accuracy
)


def save_eao_checkpoints(
    fit: FitResult, layout: RunLayout, data: DiseaseData, config: TrainConfig
) -> dict[str, str]:
    """One checkpoint per strategy: the selected member's architecture (name + kwargs) and weights; and the
    ``val_balanced_acc`` selection in the reference EAO trainer's format when it is an attn-pool head on the
    tokens as they are (the reference head has no input projection). Returns strategy -> reference file."""
    specs = fit.extra["head_specs"]
    shutil.rmtree(layout.reference_dir, ignore_errors=True)  # an older run's file would compete with this one
    written = {}
    sel = fit.selections.get(REFERENCE_STRATEGY)
    if sel is not None and specs[sel.head]["name"] == "attn-pool" and "in_proj.weight" not in sel.state:
        path = save_eao(
            layout.reference_dir,
            balanced_acc=sel.score,
            epoch=sel.epoch,
            head=eao_head_name(fit.heads[sel.head]["lr"]),
            state=attn_pool_reference_state(sel.state),
            val_metrics=sel.metrics,
        )
        written[REFERENCE_STRATEGY] = path.relative_to(layout.dir).as_posix()
    for name, sel in fit.selections.items():
        spec = specs[sel.head]
        head = {
            "kind": "eao",
            "head_name": spec["name"],
            "head_kwargs": {"dim": data.feature_dim, "num_classes": len(fit.classes), **spec["kwargs"]},
            "state_dict": sel.state,
            "norm": {"type": "raw", "mean": None, "std": None},
        }
        save_selection(layout, name, sel, data, config, fit, **head)
    return written


# ----------------------------------------------------------------------------------------------------------
# The `ctfm probe eao` task


def eao_task(options: ProbeOptions, progress: Progress = NO_PROGRESS) -> ProbeTask:
    """Task 2 for the shared runner: packed tokens in, every (head x lr) member of ``options.heads`` trained
    in one pass (``options`` checked these settings when it was made)."""
    specs, dtype = options.heads, options.dtype
    weight_decay = float(options.weight_decays[0])

    def load(disease: str) -> DiseaseData:
        return load_disease(options.store, options.model, options.labels, disease, "eao", dtype)

    def fit(data: DiseaseData, train: np.ndarray, val: np.ndarray, config: TrainConfig) -> FitResult:
        labels = data.table["label"].to_numpy()
        y_tr, y_va, classes = encode_labels(labels[train], labels[val])
        rows = data.table["row"].to_numpy()
        reader = TokenReader.from_packed(data.packed)
        device = resolve_device(config.device)
        graphed = cuda_graphed(device, config, options.cuda_graphs)
        plan = plan_memory(
            specs, len(options.lrs), reader, config.batch_size, len(classes), available_bytes(device),
            options.eval_batch_size, graphed,
        )  # fmt: skip
        logger.info("%s: EAO training %s", data.disease, plan.describe())
        check_memory(plan)
        eao_data = EAOData(reader, rows[train], y_tr, rows[val], y_va, list(classes))
        label = f"{data.disease} eao"
        with tracked(progress, label, config.epochs):
            return fit_eao(
                eao_data, specs, options.lrs, config, weight_decay, options.eval_batch_size,
                _epochs_told(progress, label), options.cuda_graphs,
            )  # fmt: skip

    settings = {"heads": [{"name": s.name, **s.kwargs} for s in specs], "dtype": dtype}
    return ProbeTask("eao", load, fit, save_eao_checkpoints, settings)


def _epochs_told(progress: Progress, label: str) -> Callable[[int, int], None]:
    """``on_epoch`` of :func:`fit_eao`, telling ``progress`` how many heads still train."""
    return lambda epoch, active: progress.advance(1, label=f"{label} ({active} heads training)")
