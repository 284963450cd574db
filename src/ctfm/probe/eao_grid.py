"""The EAO head grid: every (head architecture x learning rate) member trained on the same batches.

The members of one architecture are one module with a member axis on every parameter (see
:mod:`ctfm.probe.eao_heads`): one forward and one backward pass per batch serve all of them. Each member
keeps its own learning rate: torch's fused optimiser kernel updates each member's slice of the stacked
parameters, so it updates as a separately built head under ``torch.optim`` would (tested to 1e-5). A member
that stops early is cut out of its module and stops costing compute.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import ConfigError
from ctfm.probe.eao_heads import EAO_HEADS, MemberHead
from ctfm.probe.heads import build_head
from ctfm.probe.tokens import TokenBatch, TokenReader, eval_batches
from ctfm.probe.training import SGD_MOMENTUM


@dataclass(frozen=True)
class HeadSpec:
    """A head architecture: registry name and constructor options (without dim / num_classes)."""

    name: str
    kwargs: dict = field(default_factory=dict)

    def full_kwargs(self, dim: int, num_classes: int) -> dict:
        return {"dim": dim, "num_classes": num_classes, **self.kwargs}


@dataclass
class GridMember:
    """One trainable head of the grid: architecture and learning rate."""

    index: int
    spec: HeadSpec
    lr: float
    weight_decay: float
    active: bool = True


class StackedOptimizer:
    """AdamW or SGD with momentum over stacked member parameters, each member at its own lr and weight decay.

    Each member's rows are updated by torch's fused optimiser kernel (the one ``torch.optim.AdamW(fused=True)``
    and ``SGD(fused=True)`` run), one call per member over views of its rows, so a member follows the stock
    optimiser on a separately built head. The state is stacked like the parameters: dropping members
    is one index selection, and a step costs a few kernel calls, not a Python loop over every tensor.
    """

    def __init__(
        self,
        kind: str,
        params: Sequence[nn.Parameter],
        lrs: Sequence[float],
        weight_decays: Sequence[float],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.kind, self.params = kind, list(params)
        self.lrs, self.weight_decays = list(lrs), list(weight_decays)
        self.betas, self.eps = betas, eps
        # AdamW: first and second moments; SGD: the momentum buffer (zero = what its first step sets, as
        # dampening is 0). Steps are counted per member and parameter, as torch counts them per tensor.
        self.state = [[torch.zeros_like(p) for p in self.params] for _ in range(2 if kind == "adamw" else 1)]
        self.steps = torch.zeros(len(self.lrs), len(self.params), device=self.params[0].device)
        self._cache_rows()

    def _cache_rows(self) -> None:
        """Per member, views of its rows of every parameter, state tensor and step count (rebuilt when
        members drop)."""
        tensors = [[p.detach() for p in self.params], *self.state, list(self.steps.unbind(1))]
        self._rows = [[[t[r] for t in group] for group in tensors] for r in range(len(self.lrs))]

    def zero_grad(self) -> None:
        """Drop the gradients (cheaper than ``Module.zero_grad``, which walks the module tree every step)."""
        for p in self.params:
            p.grad = None

    def step(self, lr_factor: float, beta1: float | None = None) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        every = len(live) == len(self.params)  # the usual case: every parameter got a gradient
        if every:
            self.steps += 1
        else:
            self.steps[:, torch.as_tensor(live, device=self.steps.device)] += 1
        grads = [self.params[i].grad.unbind(0) for i in live]
        b1 = self.betas[0] if beta1 is None else beta1
        for r, (lr, wd) in enumerate(zip(self.lrs, self.weight_decays, strict=True)):
            groups = self._rows[r] if every else [[group[i] for i in live] for group in self._rows[r]]
            params, *states, steps = groups
            rows = params, [g[r] for g in grads], *states
            if self.kind == "adamw":
                torch._fused_adamw_(
                    *rows, [], steps, lr=lr * lr_factor, beta1=b1, beta2=self.betas[1],
                    weight_decay=wd, eps=self.eps, amsgrad=False, maximize=False,
                )  # fmt: skip
            else:
                torch._fused_sgd_(
                    *rows, weight_decay=wd, momentum=SGD_MOMENTUM, lr=lr * lr_factor, dampening=0.0,
                    nesterov=False, maximize=False, is_first_step=False,
                )  # fmt: skip

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only the members at ``rows`` (after the module kept the same rows of its parameters)."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.steps.device)
        self.state = [[buf.index_select(0, index) for buf in st] for st in self.state]
        self.steps = self.steps.index_select(0, index)
        self.lrs = [self.lrs[r] for r in rows]
        self.weight_decays = [self.weight_decays[r] for r in rows]
        self._cache_rows()


class MemberStack:
    """The members of one architecture: a stacked module and its stacked optimiser."""

    def __init__(
        self,
        module: MemberHead,
        members: list[GridMember],
        optimizer: str,
        betas: tuple[float, float],
    ) -> None:
        self.module, self.members = module, members
        lrs, wds = [m.lr for m in members], [m.weight_decay for m in members]
        self.optimizer = StackedOptimizer(optimizer, list(module.parameters()), lrs, wds, betas)

    def drop(self, stopped: set[int]) -> None:
        """Remove stopped members (grid indices) from the module and the optimiser, keeping the others' state."""
        rows = [r for r, m in enumerate(self.members) if m.index not in stopped]
        self.members = [self.members[r] for r in rows]
        if not rows:
            return
        self.module.keep_members(rows)
        self.optimizer.keep(rows)


class HeadGrid:
    """Every (head x lr) member, stepped together on each batch; stopped members are dropped.

    Each member starts from its own (seeded) initial draw, as the reference builds its heads one per
    learning rate from one random stream. The batch is read and padded once for all members.
    """

    def __init__(
        self,
        specs: Sequence[HeadSpec],
        lrs: Sequence[float],
        dim: int,
        num_classes: int,
        seed: int,
        weight_decay: float = 0.0,
        optimizer: str = "adamw",
        betas: tuple[float, float] = (0.9, 0.999),
        device: str | torch.device = "cpu",
    ) -> None:
        if not specs or not lrs:
            raise ConfigError("EAO grid is empty: give at least one --head and one --lr")
        self.dim, self.num_classes, self.device = dim, num_classes, torch.device(device)
        self.members: list[GridMember] = []
        self.stacks: list[MemberStack] = []
        for spec in specs:
            members = [
                GridMember(len(self.members) + k, spec, float(lr), weight_decay) for k, lr in enumerate(lrs)
            ]
            self.members.extend(members)
            torch.manual_seed(seed)
            module = build_head(spec.name, **spec.full_kwargs(dim, num_classes), members=len(lrs))
            self.stacks.append(MemberStack(module.to(self.device), members, optimizer, betas))
        self._lr_factor, self._beta1 = 1.0, None
        self._graphs: dict[tuple[int, int, bool, bool], _GraphedStep] | None = None  # None: eager steps
        self._longest = 0

    def __len__(self) -> int:
        return len(self.members)

    @property
    def active(self) -> list[GridMember]:
        return [m for m in self.members if m.active]

    def _live_stacks(self) -> list[MemberStack]:
        return [s for s in self.stacks if s.members]

    def set_schedule(self, lr_factor: float, beta1: float | None = None) -> None:
        """This step's schedule: a multiplier of each member's base lr (and one-cycle's AdamW beta1)."""
        if self._graphs and (lr_factor, beta1) != (self._lr_factor, self._beta1):
            self._graphs.clear()  # they captured the old values
        self._lr_factor, self._beta1 = lr_factor, beta1

    def stop(self, indices: Sequence[int]) -> None:
        """Stop training members (grid indices): they leave their stack and are never stepped again."""
        stopped = {int(i) for i in indices}
        for i in stopped:
            self.members[i].active = False
        for stack in self._live_stacks():
            if any(m.index in stopped for m in stack.members):
                stack.drop(stopped)
                if self._graphs:
                    self._graphs.clear()  # they captured the dropped members' tensors

    def state_of(self, index: int) -> dict[str, np.ndarray]:
        """A detached copy of one active member's weights, as the state of a single head."""
        for stack in self._live_stacks():
            for row, m in enumerate(stack.members):
                if m.index == index:
                    return stack.module.member_state(row)
        raise KeyError(f"grid member {index} is not training")

    def use_cuda_graphs(self, longest: int) -> None:
        """Replay each batch shape's whole step (forward, backward, optimiser) as one CUDA graph.

        On a GPU an eager step of the default grid is bound by launching its ~200 small kernels from Python:
        9.1 ms a step against 1.1 ms replayed, with identical weights after 200 steps (measured on an H200).
        Batches are padded to a few lengths (:func:`graph_length`, at most ``longest``) so a run captures a few
        graphs. The step's schedule is captured too: call this only for a constant schedule (a changed one
        recaptures); :func:`ctfm.probe.eao.cuda_graphed` decides when.
        """
        if self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {self.device}")
        self._graphs, self._longest = {}, longest

    def train_step(
        self, batch: TokenBatch, y: torch.Tensor, class_weight: torch.Tensor | None = None
    ) -> dict[int, torch.Tensor]:
        """One optimiser step for every active member on the same batch; returns member -> loss (a 0-d tensor
        on the training device: reading it waits for the GPU, so callers read an epoch's sum once).

        The members' losses are summed before the backward pass: each member's gradient is its own loss's.
        """
        if self._graphs is None:
            x, mask = batch.on(self.device)
            return _by_member(self._step(x, mask, y.to(self.device), class_weight))
        return self._graphed_step(batch, y, class_weight)

    def _step(
        self, x: torch.Tensor, mask: torch.Tensor | None, y: torch.Tensor, class_weight: torch.Tensor | None
    ) -> list[tuple[list[int], torch.Tensor]]:
        """The eager step: per stack, its members' grid indices and their losses [M]."""
        losses = []
        for stack in self._live_stacks():
            if not stack.module.training:
                stack.module.train()
            stack.optimizer.zero_grad()
            logits = stack.module.forward_members(x, mask)  # [M, B, C]
            loss = _member_losses(logits, y, class_weight)
            loss.sum().backward()
            stack.optimizer.step(self._lr_factor, self._beta1)
            losses.append(([m.index for m in stack.members], loss.detach()))
        return losses

    def _graphed_step(
        self, batch: TokenBatch, y: torch.Tensor, class_weight: torch.Tensor | None
    ) -> dict[int, torch.Tensor]:
        """Replay this batch shape's graph; the first batch of a shape is stepped eagerly (on a side stream,
        as capture requires) and then captured, which records the step without running it."""
        assert self._graphs is not None
        size, tokens = batch.tokens.shape[:2]
        length = graph_length(tokens, self._longest)
        masked = batch.mask is not None or length > tokens
        key = (size, length, masked, class_weight is not None)
        graph = self._graphs.get(key)
        if graph is not None:
            graph.load(batch, y)
            graph.graph.replay()
            return _by_member([(idx, loss.clone()) for idx, loss in graph.losses])
        graph = _GraphedStep(size, length, self.dim, masked, self.device)
        graph.load(batch, y)
        main, side = torch.cuda.current_stream(self.device), torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            losses = self._step(graph.x, graph.mask, graph.y, class_weight)
        main.wait_stream(side)
        try:
            with torch.cuda.graph(graph.graph):
                graph.losses = self._step(graph.x, graph.mask, graph.y, class_weight)
        except RuntimeError as exc:
            raise ConfigError(
                f"capturing the EAO training step as a CUDA graph failed ({exc}); rerun with --no-cuda-graphs"
            ) from exc
        self._graphs[key] = graph
        return _by_member(losses)

    @torch.no_grad()
    def logits(self, reader: TokenReader, rows: np.ndarray, batch_size: int) -> np.ndarray:
        """Eval-mode logits of the active members (in ``self.active`` order) for ``rows``: [members, N, C].

        Each batch is read once and fed to every stack.
        """
        stacks = self._live_stacks()
        order = {m.index: k for k, m in enumerate(self.active)}
        out = np.zeros((len(order), len(rows), self.num_classes), dtype=np.float32)
        where = {int(r): i for i, r in enumerate(rows)}
        for stack in stacks:
            stack.module.eval()
        for idx in eval_batches(np.asarray(rows), reader.lengths, batch_size):
            b = reader.batch(idx)
            x, mask = b.on(self.device)
            pos = [where[int(r)] for r in idx]
            for stack in stacks:
                z = stack.module.forward_members(x, mask).float().cpu().numpy()
                for row, m in enumerate(stack.members):
                    out[order[m.index], pos] = z[row]
        return out


def graph_length(tokens: int, longest: int) -> int:
    """Token count a graphed batch is padded to: the next power of sqrt(2), at most ``longest``, so that
    a run captures a few graphs, not one per length, and pads at most 42%."""
    if tokens >= longest:
        return tokens
    return min(longest, math.ceil(2 ** (math.ceil(2 * math.log2(tokens)) / 2)))


class _GraphedStep:
    """One batch shape's captured step: the static inputs it reads and the losses it writes."""

    def __init__(self, size: int, length: int, dim: int, masked: bool, device: torch.device) -> None:
        self.x = torch.zeros(size, length, dim, device=device)
        self.mask = torch.ones(size, length, dtype=torch.bool, device=device) if masked else None
        self.y = torch.zeros(size, dtype=torch.long, device=device)
        self.graph = torch.cuda.CUDAGraph()
        self.losses: list[tuple[list[int], torch.Tensor]] = []

    def load(self, batch: TokenBatch, y: torch.Tensor) -> None:
        """Copy a batch in, padded to the graph's length (the padding is zero and masked)."""
        tokens = batch.tokens.shape[1]
        self.x[:, :tokens].copy_(batch.tokens)
        self.x[:, tokens:].zero_()
        if self.mask is not None:
            if batch.mask is None:
                self.mask[:, :tokens].fill_(False)
            else:
                self.mask[:, :tokens].copy_(batch.mask)
            self.mask[:, tokens:].fill_(True)
        self.y.copy_(y)


def _by_member(losses: list[tuple[list[int], torch.Tensor]]) -> dict[int, torch.Tensor]:
    return {i: loss for idx, vec in losses for i, loss in zip(idx, vec.unbind(0), strict=True)}


def _member_losses(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of each member [M] (class-weighted mean as ``F.cross_entropy`` computes it)."""
    m, b, c = logits.shape
    per = nn.functional.cross_entropy(logits.reshape(m * b, c), y.repeat(m), reduction="none").view(m, b)
    if weight is None:
        return per.mean(1)
    w = weight[y]
    return (per * w).sum(1) / w.sum()


def eao_head_specs(names: Sequence[str] | None = None, **options: object) -> list[HeadSpec]:
    """Head specs for ``names`` (default: the config's ``eao.head``) from the given head options.

    Each head receives only the options its constructor accepts (``None`` = the head's default); attn-pool's
    queries, heads and layers default to the ``eao`` section of ``configs/benchmark.yaml``.
    """
    conf = load_benchmark().section("eao")
    names = list(names or [conf["head"]])
    specs = []
    for name in dict.fromkeys(names):
        if name not in EAO_HEADS:
            raise ConfigError(f"--head {name!r} is not one of {', '.join(EAO_HEADS)}")
        accepted = set(inspect.signature(EAO_HEADS[name]).parameters) - {"dim", "num_classes", "members"}
        kwargs = {k: conf[k] for k in accepted if k in conf}
        kwargs.update({k: v for k, v in options.items() if k in accepted and v is not None})
        for key, value in kwargs.items():
            _check_head_option(name, key, value)
        specs.append(HeadSpec(name, dict(sorted(kwargs.items()))))
    return specs


# Valid ranges of the head options (a value outside would crash or silently build a degenerate head).
_HEAD_OPTION_AT_LEAST = {"num_queries": 1, "num_heads": 1, "num_layers": 0, "hidden": 1, "embed_dim": 1}


def _check_head_option(head: str, key: str, value: object) -> None:
    """One clear line naming the option (as its CLI flag) when a head option is out of range."""
    flag = f"--{key.replace('_', '-')}"
    least = _HEAD_OPTION_AT_LEAST.get(key)
    if least is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
        raise ConfigError(f"{head}: {flag} must be an integer of at least {least}, not {value!r}")
    if key == "ffn_mult" and not (isinstance(value, int | float) and value > 0):
        raise ConfigError(f"{head}: {flag} must be a positive number, not {value!r}")
    if key == "dropout" and not (isinstance(value, int | float) and 0 <= value < 1):
        raise ConfigError(f"{head}: {flag} must be in [0, 1), not {value!r}")
