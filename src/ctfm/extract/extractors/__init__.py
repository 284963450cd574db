"""Extractor registry: built-ins by name plus third-party ones from the entry-point group ``ctfm.extractors``.

An extractor is any object with the attributes and methods of :class:`Extractor` (duck typing: the
numpy-only ``hu_stats`` module does not import this package's heavier neighbours). A plug-in declares::

    [project.entry-points."ctfm.extractors"]
    my-model = "my_package.module:MyExtractor"     # a class (or factory) called with no arguments

Example:
    >>> from ctfm.extract.extractors import available, get_extractor
    >>> "hu-stats" in available()
    True
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ctfm.core.errors import ConfigError

ENTRY_POINT_GROUP = "ctfm.extractors"
TASKS = ("lp", "eao")
Spacing = tuple[float, float, float]  # voxel size in mm, RAS order

# name -> "module:attribute" (imported on demand so listing extractors costs nothing)
BUILTINS: dict[str, str] = {
    "hu-stats": "ctfm.extract.extractors.hu_stats:HuStatsExtractor",
    "cnn3d": "ctfm.extract.extractors.cnn3d:Cnn3dExtractor",
}


@runtime_checkable
class Extractor(Protocol):
    """What the runner needs from an extractor.

    ``preprocess`` holds overrides of the benchmark's ``preprocess`` section (spacing_mm: list or None for
    native spacing, full_size, roi_size, hu_window, out_range, crop: "fixed" | "none").
    ``extract`` gets a batch of preprocessed volumes ``[B, X, Y, Z]`` (float32, RAS), the matching boolean
    masks or None (view ``full``), the voxel spacing in mm, and returns one ``y_hat`` per volume:
    ``[D]`` for lp, ``[D, h, w, l]`` for eao. An optional ``uses_seed = False`` says the seed does not
    change the embeddings (so a new seed does not redo stored cases).
    """

    name: str
    version: str
    preprocess: dict[str, Any]

    def setup(self, device: str = "cpu", weights: Path | None = None, seed: int = 0) -> None: ...

    def extract(
        self,
        images: np.ndarray,
        masks: np.ndarray | None,
        spacing: Spacing,
        task: str,
    ) -> list[np.ndarray]: ...


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Names of all extractors: built-ins and installed plug-ins."""
    return sorted({*BUILTINS, *_plugins()})


def get_extractor(name: str) -> Extractor:
    """Instantiate the extractor called ``name`` (built-ins win over plug-ins of the same name)."""
    if name in BUILTINS:
        module, attr = BUILTINS[name].split(":")
        factory = getattr(importlib.import_module(module), attr)
    else:
        plugins = _plugins()
        if name not in plugins:
            raise ConfigError(f"unknown extractor {name!r}; available: {', '.join(available())}")
        try:
            factory = plugins[name].load()
        except Exception as exc:  # a broken plug-in must not take the CLI down with a traceback
            raise ConfigError(
                f"extractor plug-in {name!r} failed to load: {type(exc).__name__}: {exc}"
            ) from exc
    extractor = factory()
    missing = [a for a in ("name", "version", "preprocess", "setup", "extract") if not hasattr(extractor, a)]
    if missing:
        raise ConfigError(
            f"extractor {name!r} lacks {', '.join(missing)} (see ctfm.extract.extractors.Extractor)"
        )
    return extractor
