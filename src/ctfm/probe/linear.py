"""The linear-probe grid trained as one batched computation, and the logistic-regression second opinion.

Every grid point (lr x weight decay x input norm x AdamW betas x eps) is one linear head with one logit per
class trained with cross-entropy, binary tasks included, as the reference's ``nn.Linear(D, C)`` heads: its
lr and weight decay mean what the reference's mean. All heads live in one weight tensor ``[H, D, C]``. Each
step does one matrix product per input norm for the forward pass and one for the gradient, then a hand-written
AdamW/SGD update with per-head lr and weight-decay tensors: no Python loop over heads. Heads that early-stop are
dropped from the tensors (their final weights kept), so the work shrinks as the grid converges.

Example:
    >>> grid = build_grid([1e-3, 1e-2], [1e-4], ["raw", "std"])
    >>> result = fit_linear_grid(x_tr, y_tr, x_va, y_va, grid, TrainConfig(epochs=20))  # doctest: +SKIP
    >>> result.selections["val_auroc"].metrics["auroc"]  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ctfm.core.device import resolve_device
from ctfm.core.errors import ConfigError, DataError
from ctfm.probe.training import (
    SGD_MOMENTUM,
    STRATEGIES,
    BatchSampler,
    EarlyStopping,
    FitResult,
    StrategyTracker,
    TrainConfig,
    batched_metrics,
    build_schedule,
    class_weights,
    finish_selections,
    history_frame,
    loss_per_head,
    torch_threads,
)

NORMS = ("raw", "l2", "std", "ln")
STD_EPS = 1e-6  # the reference clamps the train std here (constant dimensions)
LN_EPS = 1e-5
INIT_STD = 0.01  # heads start from N(0, 0.01) weights and zero bias, as the reference
DEFAULT_BETAS = (0.9, 0.999)
DEFAULT_EPS = 1e-8
LOGREG_CS = tuple(float(c) for c in np.logspace(-4, 4, 9))

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class NormStats:
    """An input normalisation and, for ``std``, the train-set statistics it needs at inference."""

    type: str
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @classmethod
    def fit(cls, norm: str, x_train: np.ndarray) -> NormStats:
        if norm not in NORMS:
            raise ConfigError(f"--norms {norm!r} is not one of {', '.join(NORMS)}")
        if norm != "std":
            return cls(norm)
        x = np.asarray(x_train, dtype=np.float64)
        mean = x.mean(0)
        std = np.sqrt(np.clip((x * x).mean(0) - mean * mean, 0.0, None))
        return cls(norm, mean.astype(np.float32), np.maximum(std, STD_EPS).astype(np.float32))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``[N, D]`` float32 rows (the same code path in training and at inference)."""
        if self.type == "raw":
            return x
        if self.type == "l2":
            return F.normalize(x, dim=1)
        if self.type == "ln":
            return F.layer_norm(x, (x.shape[1],), eps=LN_EPS)
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device)
        return (x - mean) / std

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "mean": None if self.mean is None else self.mean.tolist(),
            "std": None if self.std is None else self.std.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormStats:
        def arr(v: Any) -> np.ndarray | None:
            return None if v is None else np.asarray(v, dtype=np.float32)

        return cls(data["type"], arr(data.get("mean")), arr(data.get("std")))


@dataclass(frozen=True)
class GridPoint:
    """One linear head's hyper-parameters."""

    lr: float
    weight_decay: float
    norm: str
    betas: tuple[float, float] = DEFAULT_BETAS
    eps: float = DEFAULT_EPS

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


def _sci(value: float) -> str:
    return f"{value:.0e}".replace("-", "_").replace("+", "_").replace(".", "_")


def head_name(point: GridPoint, swept: set[str]) -> str:
    """The reference's head name: ``clf_lr_<lr>`` plus a suffix for every axis with more than one value."""
    name = f"clf_lr_{_sci(point.lr)}"
    if "weight_decay" in swept:
        name += f"_wd_{_sci(point.weight_decay)}"
    if "norm" in swept:
        name += f"_norm_{point.norm}"
    if "betas" in swept:
        name += f"_b1_{point.betas[0]:.3f}_b2_{point.betas[1]:.4f}".replace(".", "_")
    if "eps" in swept:
        name += f"_eps_{_sci(point.eps)}"
    return name


def build_grid(
    lrs: Sequence[float],
    weight_decays: Sequence[float],
    norms: Sequence[str],
    betas: Sequence[tuple[float, float]] = (DEFAULT_BETAS,),
    eps: Sequence[float] = (DEFAULT_EPS,),
) -> list[GridPoint]:
    """All combinations in the reference order (lr outermost, eps innermost)."""
    for norm in norms:
        if norm not in NORMS:
            raise ConfigError(f"--norms {norm!r} is not one of {', '.join(NORMS)}")
    if not (lrs and weight_decays and norms and betas and eps):
        raise ConfigError("every grid axis (lrs, weight decays, norms, betas, eps) needs at least one value")
    return [
        GridPoint(float(lr), float(wd), norm, (float(b[0]), float(b[1])), float(e))
        for lr, wd, norm, b, e in itertools.product(lrs, weight_decays, norms, betas, eps)
    ]


def grid_heads(grid: Sequence[GridPoint]) -> list[dict[str, Any]]:
    """One dict per head: its reference name and hyper-parameters."""
    swept = {
        axis
        for axis, values in (
            ("weight_decay", {p.weight_decay for p in grid}),
            ("norm", {p.norm for p in grid}),
            ("betas", {p.betas for p in grid}),
            ("eps", {p.eps for p in grid}),
        )
        if len(values) > 1
    }
    return [{"name": head_name(p, swept), **p.as_dict()} for p in grid]


def encode_labels(y_train: np.ndarray, y_val: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Class values -> indices 0..C-1; both splits must hold at least two classes."""
    for split, y in (("train", y_train), ("val", y_val)):
        if len(np.unique(y)) < 2:
            raise DataError(
                f"the {split} split holds only class {np.unique(y).tolist()}: cannot train a probe"
            )
    classes = np.unique(np.concatenate([y_train, y_val]))
    return np.searchsorted(classes, y_train), np.searchsorted(classes, y_val), classes.tolist()


def _group_slices(groups: np.ndarray) -> list[tuple[int, int, int]]:
    """Contiguous runs of equal norm group: (group, start, end)."""
    bounds = np.flatnonzero(np.diff(groups)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(groups)]])
    return [(int(groups[s]), int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def init_heads(
    n_heads: int, n_classes: int, dim: int, seed: int, standardised: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The heads' starting weights ``[H, C, D]`` (grid order) and biases ``[H, C]``: N(0, 0.01) and zero, the
    very draws the reference trainer starts from.

    run_LP.py seeds torch's generator with ``seed``, iterates one DataLoader when some head standardises its
    input (the train statistics pass: one int64 draw), then builds one ``nn.Linear`` per head in grid order
    (its default initialisation: C x D and C uniform draws) and redraws the weights from N(0, 0.01), the bias
    zero. Replaying that sequence on a private generator gives the same weights without touching the global
    one (with the same torch; another version may draw otherwise, with the same distribution).
    """
    gen = torch.Generator().manual_seed(seed)
    if standardised:
        torch.empty((), dtype=torch.int64).random_(generator=gen)
    weight = torch.empty(n_heads, n_classes, dim)
    for h in range(n_heads):
        torch.empty(n_classes, dim).uniform_(generator=gen)  # nn.Linear's own draws, overwritten
        torch.empty(n_classes).uniform_(generator=gen)
        weight[h].normal_(0.0, INIT_STD, generator=gen)
    return weight, torch.zeros(n_heads, n_classes)


def _loss_and_grad(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head batch cross-entropy ``[H]`` and its gradient w.r.t. the logits ``[H, B, C]``."""
    logp = torch.log_softmax(z, dim=-1)
    onehot = F.one_hot(y, z.shape[-1]).to(z.dtype)
    per = -(logp * onehot).sum(-1)
    d = logp.exp() - onehot
    if w is None:
        return per.mean(1), d / z.shape[1]
    share = w / w.sum()
    return (per * share).sum(1), d * share.view(1, -1, 1)


class _VectorOptimizer:
    """AdamW (PyTorch's decoupled decay and bias correction) or SGD with momentum, per-head lr/wd tensors."""

    def __init__(self, kind: str, params: list[torch.Tensor], hyper: dict[str, torch.Tensor]) -> None:
        self.kind = kind
        self.hyper = hyper  # per-head tensors [H]: lr, wd, beta1, beta2, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params] if kind == "adamw" else []
        self.t = 0

    def keep(self, index: torch.Tensor) -> None:
        """Drop stopped heads from the state (index: positions kept)."""
        self.hyper = {k: v[index] for k, v in self.hyper.items()}
        self.m = [m[index] for m in self.m]
        self.v = [v[index] for v in self.v]

    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor], factor: float, beta1: float | None):
        self.t += 1
        h = self.hyper
        lr = h["lr"] * factor
        for p, g, i in zip(params, grads, range(len(params)), strict=True):
            shape = (-1,) + (1,) * (p.dim() - 1)
            lr_, wd = lr.view(shape), h["wd"].view(shape)
            if self.kind == "sgd":
                g = g + wd * p
                self.m[i] = g.clone() if self.t == 1 else self.m[i].mul_(SGD_MOMENTUM).add_(g)
                p.sub_(lr_ * self.m[i])
                continue
            b1 = h["beta1"].view(shape) if beta1 is None else torch.full_like(h["beta1"], beta1).view(shape)
            b2, eps = h["beta2"].view(shape), h["eps"].view(shape)
            # torch.optim.AdamW's update, in place where it can be: the moments and parameters are the big
            # tensors (every head's weights), the per-head factors are [H, 1, ...]
            p.mul_(1 - lr_ * wd)
            self.m[i].lerp_(g, 1 - b1)
            self.v[i].mul_(b2).addcmul_(g * (1 - b2), g)
            denom = self.v[i].sqrt().div_((1 - b2**self.t).sqrt()).add_(eps)
            p.sub_(self.m[i].div(denom).mul_(lr_ / (1 - b1**self.t)))


def _snapshotter(
    weight: torch.Tensor, bias: torch.Tensor, val_logits: np.ndarray, positions: np.ndarray
) -> Callable[[int], tuple[dict[str, np.ndarray], np.ndarray]]:
    """Copy the i-th candidate head's weights (nn.Linear layout ``[C, D]``) and val logits when selected."""

    def snapshot(i: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        p = int(positions[i])
        state = {"weight": weight[p].T.cpu().numpy().copy(), "bias": bias[p].cpu().numpy().copy()}
        return state, val_logits[p].copy()

    return snapshot


def fit_linear_grid(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    grid: Sequence[GridPoint],
    config: TrainConfig,
    progress: ProgressFn | None = None,
) -> FitResult:
    """Train every grid head at once; returns each checkpoint strategy's best (head, epoch) and the history."""
    config.validated()
    device = resolve_device(config.device)
    with torch_threads(device, config.threads):
        return _fit_grid((x_train, y_train, x_val, y_val), grid, config, device, progress)


def _fit_grid(
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    grid: Sequence[GridPoint],
    config: TrainConfig,
    device: torch.device,
    progress: ProgressFn | None,
) -> FitResult:
    """:func:`fit_linear_grid` on ``device``; ``arrays``: train features and labels, then val."""
    x_train, y_train, x_val, y_val = arrays
    started = time.perf_counter()
    ytr, yva, classes = encode_labels(np.asarray(y_train), np.asarray(y_val))
    n_classes = len(classes)
    norms = list(dict.fromkeys(p.norm for p in grid))
    stats = {n: NormStats.fit(n, x_train) for n in norms}

    def views(x: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x, dtype=np.float32))
        return torch.stack([stats[n].apply(t) for n in norms]).to(device)

    xtr, xva = views(x_train), views(x_val)
    group_of = np.array([norms.index(p.norm) for p in grid])
    live = np.argsort(group_of, kind="stable")  # grid index of each live head, grouped by norm
    n_heads, dim = len(grid), xtr.shape[2]

    w_init, b_init = init_heads(n_heads, n_classes, dim, config.seed, standardised="std" in norms)
    weight = w_init[torch.as_tensor(live)].transpose(1, 2).contiguous().to(device)
    bias = b_init.to(device)

    def per_head(values: list[float]) -> torch.Tensor:
        return torch.tensor(np.asarray(values, dtype=np.float64)[live], dtype=torch.float32, device=device)

    opt = _VectorOptimizer(
        config.optimizer,
        [weight, bias],
        {
            "lr": per_head([p.lr for p in grid]),
            "wd": per_head([p.weight_decay for p in grid]),
            "beta1": per_head([p.betas[0] for p in grid]),
            "beta2": per_head([p.betas[1] for p in grid]),
            "eps": per_head([p.eps for p in grid]),
        },
    )
    final_w = np.zeros((n_heads, n_classes, dim), dtype=np.float32)
    final_b = np.zeros((n_heads, n_classes), dtype=np.float32)
    sampler = BatchSampler(ytr, config.batch_size, config.sampling, config.seed, n_classes)
    schedule = build_schedule(config.schedule, config.epochs, sampler.steps_per_epoch, config.warmup_epochs)
    loss_w = (
        torch.as_tensor(class_weights(ytr, n_classes), dtype=torch.float32, device=device)
        if config.sampling == "loss-weight"
        else None
    )
    ytr_t = torch.as_tensor(ytr, device=device)
    yva_t = torch.as_tensor(yva, device=device)
    mode, monitor_fn = STRATEGIES[config.monitor]
    stopper = EarlyStopping(n_heads, mode, config.ema_decay, config.patience, config.min_epoch)
    tracker = StrategyTracker(config.strategies, config.min_epoch)
    records: list[dict[str, np.ndarray]] = []
    step, epoch = 0, 0

    for epoch in range(1, config.epochs + 1):
        slices = _group_slices(group_of[live])
        loss_sum = torch.zeros(len(live), device=device)
        seen = 0
        for idx in sampler.epoch():
            idx = idx.to(device)
            yb = ytr_t[idx]
            wb = None if loss_w is None else loss_w[yb]
            grad_w, grad_b = torch.empty_like(weight), torch.empty_like(bias)
            for g, s, e in slices:
                xb = xtr[g].index_select(0, idx)
                z = torch.einsum("bd,hdo->hbo", xb, weight[s:e]) + bias[s:e, None, :]
                loss, dz = _loss_and_grad(z, yb, wb)
                loss_sum[s:e] += loss * len(idx)
                grad_w[s:e] = torch.einsum("bd,hbo->hdo", xb, dz)
                grad_b[s:e] = dz.sum(1)
            beta1 = None if schedule.beta1 is None else float(schedule.beta1[step])
            opt.step([weight, bias], [grad_w, grad_b], float(schedule.lr_factor[step]), beta1)
            step += 1
            seen += len(idx)
        with torch.no_grad():
            zva = torch.cat(
                [torch.einsum("nd,hdo->hno", xva[g], weight[s:e]) + bias[s:e, None, :] for g, s, e in slices]
            )
            val_loss = loss_per_head(zva, yva_t)
        zva_np = zva.cpu().numpy()
        metrics = batched_metrics(yva, zva_np, val_loss.cpu().numpy())
        stopped_now = stopper.update(epoch, live, monitor_fn(metrics))
        records.append(
            {
                "epoch": np.full(len(live), epoch),
                "head": live.copy(),
                "train_loss": (loss_sum / max(seen, 1)).cpu().numpy(),
                **{k: v.astype(np.float64) for k, v in metrics.items()},
                "monitor_ema": stopper.ema[live].copy(),
                "lr": opt.hyper["lr"].cpu().numpy() * float(schedule.lr_factor[step - 1]),
            }
        )
        still = ~np.isin(live, stopped_now)
        positions = np.flatnonzero(still)

        snapshot = _snapshotter(weight, bias, zva_np, positions)
        tracker.update(epoch, live[still], {k: v[still] for k, v in metrics.items()}, snapshot)
        if progress is not None:
            progress(epoch, int(still.sum()))
        if len(stopped_now):
            gone = np.flatnonzero(~still)
            final_w[live[gone]] = weight[gone].transpose(1, 2).cpu().numpy()
            final_b[live[gone]] = bias[gone].cpu().numpy()
            keep = torch.as_tensor(positions, device=device)
            weight, bias = weight[keep].contiguous(), bias[keep].contiguous()
            opt.keep(keep)
            live = live[still]
        if len(live) == 0:
            break
    if len(live):
        final_w[live] = weight.transpose(1, 2).cpu().numpy()
        final_b[live] = bias.cpu().numpy()

    finish_selections(tracker.best, yva)
    return FitResult(
        heads=grid_heads(grid),
        selections=tracker.best,
        history=history_frame(records),
        stopped_epoch=stopper.stopped_epoch,
        epochs_run=epoch,
        seconds=time.perf_counter() - started,
        classes=classes,
        num_train=len(ytr),
        num_val=len(yva),
        extra={"norms": stats, "final_weight": final_w, "final_bias": final_b, "device": str(device)},
    )


def fit_logreg(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    norms: Sequence[str],
    config: TrainConfig,
    cs: Sequence[float] = LOGREG_CS,
) -> FitResult:
    """scikit-learn L-BFGS logistic regression per (C, norm), selected on val by the same strategies.

    Class-balanced unless ``config.sampling`` is ``none``. Each fit is one "head" at epoch 1 with one logit per
    class, so the outputs (checkpoints, reports) have the linear grid's format.
    """
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    ytr, yva, classes = encode_labels(np.asarray(y_train), np.asarray(y_val))
    stats = {n: NormStats.fit(n, x_train) for n in dict.fromkeys(norms)}
    xtr, xva = (torch.as_tensor(np.asarray(x, dtype=np.float32)) for x in (x_train, x_val))
    normed = {n: (st.apply(xtr).numpy(), st.apply(xva).numpy()) for n, st in stats.items()}
    heads: list[dict[str, Any]] = []
    logits, states, losses = [], [], []
    for c, norm in itertools.product(cs, stats):
        xt, xv = normed[norm]
        model = LogisticRegression(
            C=float(c),
            solver="lbfgs",
            max_iter=2000,
            class_weight=None if config.sampling == "none" else "balanced",
        )
        model.fit(xt, ytr)
        weight, bias = _class_logit_layer(model.coef_, model.intercept_)
        heads.append({"name": f"logreg_C_{_sci(c)}_norm_{norm}", "C": float(c), "norm": norm})
        z = xv @ weight.T + bias
        logits.append(z)
        states.append({"weight": weight, "bias": bias})
        losses.append(float(loss_per_head(torch.as_tensor(z[None]), torch.as_tensor(yva))[0]))
    zva = np.stack(logits)
    metrics = batched_metrics(yva, zva, np.asarray(losses))
    tracker = StrategyTracker(config.strategies, min_epoch=0)
    all_heads = np.arange(len(heads))
    tracker.update(1, all_heads, metrics, lambda i: (states[i], zva[i]))
    finish_selections(tracker.best, yva)
    history = history_frame(
        [
            {
                "epoch": np.ones(len(heads), dtype=np.int64),
                "head": all_heads,
                "train_loss": np.full(len(heads), np.nan),
                **metrics,
            }
        ]
    )
    return FitResult(
        heads=heads,
        selections=tracker.best,
        history=history,
        stopped_epoch=np.zeros(len(heads), dtype=np.int64),
        epochs_run=1,
        seconds=time.perf_counter() - started,
        classes=classes,
        num_train=len(ytr),
        num_val=len(yva),
        extra={"norms": stats},
    )


def _class_logit_layer(coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's coefficients as a ``[C, D]`` layer: its single binary logit ``z`` becomes ``[0, z]``
    (softmax of that is its sigmoid), so every head has one logit per class."""
    coef, intercept = np.asarray(coef, dtype=np.float32), np.asarray(intercept, dtype=np.float32)
    if coef.shape[0] == 1:
        coef = np.concatenate([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    return coef, intercept
