"""The head registry: every trainable head is rebuilt from ``(name, kwargs)`` stored in a checkpoint.

A head module maps inputs to logits. Linear-probe heads see one normalised vector per case ``[N, D]``;
EAO heads see tokens. Register a new head with :func:`register_head`; rebuild any head with
:func:`build_head`. Modules that define heads are listed in ``HEAD_MODULES`` so a checkpoint can be loaded
without the caller importing them first.

Example:
    >>> head = build_head("linear", in_dim=8, out_dim=2)
    >>> head(torch.zeros(2, 8)).shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

from ctfm.core.errors import ConfigError

HeadFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, HeadFactory] = {}

# Modules that register heads when imported (the EAO heads live beside the linear ones).
HEAD_MODULES: tuple[str, ...] = ("ctfm.probe.eao_heads",)


def register_head(name: str) -> Callable[[HeadFactory], HeadFactory]:
    """Decorator: make ``factory(**kwargs) -> nn.Module`` buildable as ``build_head(name, **kwargs)``."""

    def deco(factory: HeadFactory) -> HeadFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"head {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def _load_head_modules() -> None:
    for module in HEAD_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a real import error inside the module must surface
                raise


def head_names() -> list[str]:
    """Every registered head name."""
    _load_head_modules()
    return sorted(_REGISTRY)


def build_head(name: str, **kwargs: object) -> nn.Module:
    """Build a registered head; raises :class:`ConfigError` for an unknown head (naming the known ones) or
    options its constructor does not take."""
    if name not in _REGISTRY:
        _load_head_modules()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown head {name!r}; known heads: {', '.join(sorted(_REGISTRY))}")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"head {name!r}: bad options {sorted(kwargs)} ({exc})") from exc


class LinearHead(nn.Module):
    """One linear layer on an already-normalised vector: ``out_dim`` logits, one per class."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


@register_head("linear")
def _linear(in_dim: int, out_dim: int) -> nn.Module:
    return LinearHead(in_dim=in_dim, out_dim=out_dim)
