"""The head table: every trainable head is rebuilt from ``(name, kwargs)`` stored in a checkpoint.

A head module maps inputs to logits. Linear-probe heads see one normalised vector per case ``[N, D]``;
EAO heads see tokens (:data:`ctfm.probe.eao_heads.EAO_HEADS`). This module owns the table of every head, so
loading a checkpoint needs no other import: rebuild any head with :func:`build_head`.

Example:
    >>> head = build_head("linear", in_dim=8, out_dim=2)
    >>> head(torch.zeros(2, 8)).shape
    torch.Size([2, 2])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ctfm.core.errors import ConfigError
from ctfm.probe.eao_heads import EAO_HEADS

HeadFactory = Callable[..., nn.Module]


class LinearHead(nn.Module):
    """One linear layer on an already-normalised vector: ``out_dim`` logits, one per class."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


HEADS: dict[str, HeadFactory] = {"linear": LinearHead, **EAO_HEADS}


def build_head(name: str, **kwargs: object) -> nn.Module:
    """Build a head of :data:`HEADS`; raises :class:`ConfigError` for an unknown head (naming the known ones) or
    options its constructor does not take."""
    if name not in HEADS:
        raise ConfigError(f"unknown head {name!r}; known heads: {', '.join(sorted(HEADS))}")
    try:
        return HEADS[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"head {name!r}: bad options {sorted(kwargs)} ({exc})") from exc
