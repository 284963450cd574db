"""The compute device a stage runs on, from the ``--device`` option every stage shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctfm.core.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when torch sees a GPU, else the CPU; ``cuda`` without a GPU is a clear error."""
    import torch

    if name not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)
