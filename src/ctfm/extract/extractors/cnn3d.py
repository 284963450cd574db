"""``cnn3d``: a small MONAI 3D CNN encoder with fixed, seeded weights (or ``--weights FILE``).

lp: global average and max pooling of every stage, concatenated (multi-scale, like the 1120-d baseline);
eao: the last feature map ``[D, h, w, l]``. Works at 3 mm on a small fixed size so the CPU demo stays fast;
runs on the GPU when the runner asks for ``cuda``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.blocks import Convolution
from torch import nn

from ctfm.core.errors import ConfigError
from ctfm.extract.extractors import TASKS

NAME = "cnn3d"
VERSION = "1.0"
CHANNELS = (16, 32, 64, 128)


class Encoder3d(nn.Module):
    """Stages of (strided conv, conv) MONAI blocks; returns every stage's feature map."""

    def __init__(self, channels: tuple[int, ...] = CHANNELS, in_channels: int = 1) -> None:
        super().__init__()
        act = ("leakyrelu", {"negative_slope": 0.1})
        stages = []
        prev = in_channels
        for ch in channels:
            stages.append(
                nn.Sequential(
                    Convolution(3, prev, ch, strides=2, kernel_size=3, act=act, norm=None),
                    Convolution(3, ch, ch, strides=1, kernel_size=3, act=act, norm=None),
                )
            )
            prev = ch
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps


def lp_features(maps: list[torch.Tensor]) -> torch.Tensor:
    """``[B, 2 * sum(channels)]``: average and max pooled stages, concatenated."""
    pooled = [torch.cat([m.mean(dim=(2, 3, 4)), m.amax(dim=(2, 3, 4))], dim=1) for m in maps]
    return torch.cat(pooled, dim=1)


class Cnn3dExtractor:
    """Registry wrapper around :class:`Encoder3d`."""

    name = NAME
    version = VERSION
    preprocess: dict[str, Any] = {  # noqa: RUF012 - read-only class default
        "spacing_mm": [3.0, 3.0, 3.0],
        "full_size": [96, 96, 96],
        "roi_size": [64, 64, 64],
        "out_range": [0.0, 1.0],
        "crop": "fixed",
    }

    def __init__(self) -> None:
        self.model: Encoder3d | None = None
        self.device = torch.device("cpu")

    def setup(self, device: str = "cpu", weights: Path | None = None, seed: int = 0) -> None:
        """Build the encoder with seeded weights, or load ``weights`` (a state_dict saved by torch.save)."""
        torch.manual_seed(seed)
        model = Encoder3d()
        if weights is not None:
            try:
                state = torch.load(Path(weights), map_location="cpu", weights_only=True)
                model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
            except (OSError, RuntimeError, KeyError, AttributeError, pickle.UnpicklingError) as exc:
                raise ConfigError(f"{weights}: not a cnn3d state_dict ({type(exc).__name__}: {exc})") from exc
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @torch.inference_mode()
    def extract(self, images: np.ndarray, masks: object, spacing: object, task: str) -> list[np.ndarray]:
        """One embedding per volume of the batch; ``masks`` and ``spacing`` are not used (the runner has
        already cropped around the mask and resampled to :attr:`preprocess`'s spacing)."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; use {' or '.join(TASKS)}")
        if self.model is None:
            self.setup()
        assert self.model is not None
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32)[:, None].to(self.device)
        maps = self.model(x)
        out = lp_features(maps) if task == "lp" else maps[-1]
        return list(out.float().cpu().numpy())
