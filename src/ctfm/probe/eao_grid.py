"""The EAO head grid: every (head architecture x learning rate) member trained on the same batches.

The members of one architecture are one module with a member axis on every parameter (see
:mod:`ctfm.probe.eao_heads`): one forward and one backward pass per batch serve all of them. Each member
keeps its own learning rate through a stock torch optimiser whose parameter groups are the members' slices
of the stacked parameters, so it updates exactly as a separately built head would. A member that stops
early is cut out of its module and stops costing compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ctfm.errors import ConfigError
from ctfm.probe.eao_heads import MemberHead
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


def _optimizer(name: str, groups: list[dict], betas: tuple[float, float]) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over per-member groups (each group sets its own lr and weight decay)."""
    if name == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=SGD_MOMENTUM)
    try:  # the fused kernel is several times faster on CPU and GPU where this torch has it
        return torch.optim.AdamW(groups, lr=0.0, betas=betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=0.0, betas=betas)


class MemberStack:
    """The members of one architecture: a stacked module and per-member optimiser groups.

    Each member's parameters, as the optimiser sees them, are views of its rows of the stacked parameters;
    their gradients are set to the matching rows of the stacked gradients before each step.
    """

    def __init__(
        self,
        module: MemberHead,
        members: list[GridMember],
        optimizer: str,
        betas: tuple[float, float],
    ) -> None:
        self.module, self.members = module, members
        self._kind, self._betas = optimizer, betas
        self._build_optimizer()

    def _build_optimizer(self, states: list[list[dict]] | None = None) -> None:
        """One param group per member; ``states`` (per member, per parameter) carries optimiser state over."""
        params = list(self.module.parameters())
        self.views = [[p.detach()[row] for p in params] for row in range(len(self.members))]
        groups = [
            {"params": v, "lr": m.lr, "weight_decay": m.weight_decay}
            for v, m in zip(self.views, self.members, strict=True)
        ]
        self.optimizer = _optimizer(self._kind, groups, self._betas)
        if states is None:
            return
        for views, state in zip(self.views, states, strict=True):
            for view, kept in zip(views, state, strict=True):
                if kept:
                    self.optimizer.state[view] = kept

    def step(self, lr_factor: float, beta1: float | None) -> None:
        params = list(self.module.parameters())
        for group, member in zip(self.optimizer.param_groups, self.members, strict=True):
            group["lr"] = member.lr * lr_factor
            if beta1 is not None and "betas" in group:
                group["betas"] = (beta1, group["betas"][1])
        for row, views in enumerate(self.views):
            for view, p in zip(views, params, strict=True):
                view.grad = None if p.grad is None else p.grad[row]
        self.optimizer.step()

    def drop(self, stopped: set[int]) -> None:
        """Remove stopped members (grid indices) from the module and the optimiser, keeping the others' state."""
        rows = [r for r, m in enumerate(self.members) if m.index not in stopped]
        states = [[self.optimizer.state.get(v, {}) for v in self.views[r]] for r in rows]
        self.members = [self.members[r] for r in rows]
        if not rows:
            return
        self.module.keep_members(rows)
        self._build_optimizer(states)


class HeadGrid:
    """Every (head x lr) member, stepped together on each batch; stopped members are dropped.

    Members of one architecture start from the same initial weights (seeded), as the reference trains one
    freshly seeded head per learning rate. The batch is read and padded once for all members.
    """

    def __init__(
        self,
        specs: Sequence[HeadSpec],
        lrs: Sequence[float],
        dim: int,
        num_classes: int,
        seed: int,
        weight_decay: float = 1e-4,
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

    def __len__(self) -> int:
        return len(self.members)

    @property
    def active(self) -> list[GridMember]:
        return [m for m in self.members if m.active]

    def _live_stacks(self) -> list[MemberStack]:
        return [s for s in self.stacks if s.members]

    def set_schedule(self, lr_factor: float, beta1: float | None = None) -> None:
        """This step's schedule: a multiplier of each member's base lr (and one-cycle's AdamW beta1)."""
        self._lr_factor, self._beta1 = lr_factor, beta1

    def stop(self, indices: Sequence[int]) -> None:
        """Stop training members (grid indices): they leave their stack and are never stepped again."""
        stopped = {int(i) for i in indices}
        for i in stopped:
            self.members[i].active = False
        for stack in self._live_stacks():
            if any(m.index in stopped for m in stack.members):
                stack.drop(stopped)

    def state_of(self, index: int) -> dict[str, np.ndarray]:
        """A detached copy of one active member's weights, as the state of a single head."""
        for stack in self._live_stacks():
            for row, m in enumerate(stack.members):
                if m.index == index:
                    return stack.module.member_state(row)
        raise KeyError(f"grid member {index} is not training")

    def train_step(
        self, batch: TokenBatch, y: torch.Tensor, class_weight: torch.Tensor | None = None
    ) -> dict[int, float]:
        """One optimiser step for every active member on the same batch; returns member -> loss.

        The members' losses are summed before the backward pass: each member's gradient is its own loss's.
        """
        x, mask = batch.tokens.to(self.device), batch.mask.to(self.device)
        y = y.to(self.device)
        losses: dict[int, float] = {}
        for stack in self._live_stacks():
            stack.module.train()
            stack.module.zero_grad(set_to_none=True)
            logits = stack.module.forward_members(x, mask)  # [M, B, C]
            loss = _member_losses(logits, y, class_weight)
            loss.sum().backward()
            stack.step(self._lr_factor, self._beta1)
            losses.update(zip((m.index for m in stack.members), loss.detach().cpu().tolist(), strict=True))
        return losses

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
            x, mask = b.tokens.to(self.device), b.mask.to(self.device)
            pos = [where[int(r)] for r in idx]
            for stack in stacks:
                z = stack.module.forward_members(x, mask).float().cpu().numpy()
                for row, m in enumerate(stack.members):
                    out[order[m.index], pos] = z[row]
        return out


def _member_losses(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of each member [M] (class-weighted mean as ``F.cross_entropy`` computes it)."""
    m, b, c = logits.shape
    per = nn.functional.cross_entropy(logits.reshape(m * b, c), y.repeat(m), reduction="none").view(m, b)
    if weight is None:
        return per.mean(1)
    w = weight[y]
    return (per * w).sum(1) / w.sum()
