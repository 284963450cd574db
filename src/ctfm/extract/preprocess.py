"""Preprocessing with MONAI transforms: load, reorient to RAS, resample, clip/scale HU, fixed-size crop.

The recipe follows the baseline containers (benchmark facts): the whole scan padded/cropped to a fixed size, or
a fixed-size crop centred on the mask's bounding box. Defaults come from the ``preprocess`` section of
``configs/benchmark.yaml``; each extractor overrides what it needs (``Extractor.preprocess``), e.g. ``cnn3d`` at
3 mm and a small size so the CPU demo stays fast, ``hu-stats`` at native spacing without a crop.

Reading (``load``) and the rest (``transform``) are separate steps so the runner can time them apart.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    BorderPad,
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    MapTransform,
    Orientationd,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialCrop,
    ThresholdIntensityd,
)

from ctfm.benchmark import load_benchmark
from ctfm.errors import ConfigError, DataError

IMAGE, MASK = "image", "mask"
MASK_CENTER = "roi_center_world"  # must not start with "mask_": MONAI treats such keys as meta dicts
CROPS = ("fixed", "none")
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # explicit: nibabel-style RAS affines


@dataclass(frozen=True)
class PreprocessSpec:
    """Resolved preprocessing settings (see ``configs/benchmark.yaml`` ``preprocess``)."""

    spacing_mm: tuple[float, float, float] | None  # None: keep the native spacing
    full_size: tuple[int, int, int]
    roi_size: tuple[int, int, int]
    hu_window: tuple[float, float]
    out_range: tuple[float, float] | None  # None: keep HU (clip to the window only)
    crop: str  # "fixed": pad/crop to full_size or roi_size; "none": keep the whole (reoriented) volume

    @property
    def pad_value(self) -> float:
        """Intensity of air after the intensity step: what padding must look like."""
        return float(self.out_range[0] if self.out_range else self.hu_window[0])


def resolve_spec(overrides: Mapping[str, Any] | None = None) -> PreprocessSpec:
    """Benchmark defaults updated with an extractor's overrides; bad values raise :class:`ConfigError`."""
    conf: dict[str, Any] = {"out_range": [0.0, 1.0], "crop": "fixed"}
    conf.update(load_benchmark().section("preprocess"))
    conf.update(overrides or {})
    try:
        spacing = None if conf["spacing_mm"] is None else _triple(conf["spacing_mm"], float)
        spec = PreprocessSpec(
            spacing_mm=spacing,
            full_size=_triple(conf["full_size"], int),
            roi_size=_triple(conf["roi_size"], int),
            hu_window=(float(conf["hu_window"][0]), float(conf["hu_window"][1])),
            out_range=None
            if conf["out_range"] is None
            else (float(conf["out_range"][0]), float(conf["out_range"][1])),
            crop=str(conf["crop"]),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ConfigError(f"invalid preprocess settings {conf}: {exc}") from exc
    if spec.crop not in CROPS:
        raise ConfigError(f"preprocess crop must be one of {', '.join(CROPS)}, not {spec.crop!r}")
    if spec.hu_window[0] >= spec.hu_window[1]:
        raise ConfigError(f"preprocess hu_window {spec.hu_window} must be (low, high) with low < high")
    return spec


def _triple(value: Any, kind: type) -> tuple:
    vals = [value] * 3 if isinstance(value, (int, float)) else list(value)
    if len(vals) != 3:
        raise ValueError(f"expected 3 values, got {value!r}")
    return tuple(kind(v) for v in vals)


def mask_bbox(
    mask: np.ndarray, empty_error: str = "empty mask: no foreground voxel"
) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` voxel bounding box of a boolean ``[X, Y, Z]`` mask; an empty mask raises DataError."""
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        if idx.size == 0:
            raise DataError(empty_error)
        lo.append(int(idx[0]))
        hi.append(int(idx[-1]) + 1)
    return np.array(lo), np.array(hi)


def centred_box(center: np.ndarray, size: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    start = np.asarray(center, dtype=int) - np.asarray(size) // 2
    return start, start + np.asarray(size)


class CropBoxd(MapTransform):
    """Fixed-size crop centred on the mask's bounding box (or the image centre), padding where it leaves the image.

    The centre comes in world mm (``center_on`` key), measured on the mask before resampling, so an organ
    thinner than the target voxel still centres the crop. Built from MONAI's ``BorderPad`` and ``SpatialCrop`` so the crop stays centred on the finding even at the
    border (a plain ``SpatialCrop`` would shift it). Stores the box, in voxels of its input, under ``crop_box``.
    """

    def __init__(
        self, keys: list[str], size: tuple[int, int, int], pad_values: dict[str, float], center_on: str | None
    ):
        super().__init__(keys)
        self.size = size
        self.pad_values = pad_values
        self.center_on = center_on

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        shape = np.array(d[IMAGE].shape[1:])
        if self.center_on is not None:  # world mm -> voxel of the current (resampled) grid
            world = np.append(np.asarray(d[self.center_on], dtype=np.float64), 1.0)
            center = np.rint((np.linalg.inv(_affine(d[IMAGE])) @ world)[:3]).astype(int)
        else:
            center = shape // 2
        start, end = centred_box(center, self.size)
        before, after = np.maximum(0, -start), np.maximum(0, end - shape)
        border = [int(v) for pair in zip(before, after, strict=True) for v in pair]
        crop = SpatialCrop(roi_start=(start + before).tolist(), roi_end=(end + before).tolist())
        for key in self.keys:
            padded = BorderPad(spatial_border=border, value=self.pad_values.get(key, 0.0))(d[key])
            d[key] = crop(padded)
        d["crop_box"] = (start, end)
        return d


@dataclass
class Prepared:
    """One preprocessed case: arrays in RAS at the target spacing plus the geometry the manifest records."""

    image: np.ndarray  # [X, Y, Z] float32
    mask: np.ndarray | None  # [X, Y, Z] bool
    spacing: tuple[float, float, float]
    source_spacing: tuple[float, ...]
    source_origin: tuple[float, ...]
    source_direction: tuple[float, ...]
    crop_box_voxel: tuple[int, ...]
    crop_box_world: tuple[float, ...]


def _affine(meta_tensor: Any) -> np.ndarray:
    return np.asarray(torch.as_tensor(meta_tensor.affine), dtype=np.float64)


def _source_geometry(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = affine[:3, :3] / spacing
    return (
        tuple(round(float(s), 6) for s in spacing),
        tuple(round(float(o), 4) for o in affine[:3, 3]),
        tuple(round(float(v), 6) for v in direction.ravel()),
    )


class Preprocessor:
    """MONAI pipeline for one (spec, with/without mask) combination. Picklable, so loader workers can run it."""

    def __init__(self, spec: PreprocessSpec, with_mask: bool) -> None:
        self.spec = spec
        self.with_mask = with_mask
        keys = [IMAGE, MASK] if with_mask else [IMAGE]
        self._load = Compose([LoadImaged(keys=keys, image_only=True), EnsureChannelFirstd(keys=keys)])
        steps: list[Any] = [Orientationd(keys=keys, axcodes="RAS", labels=RAS_LABELS)]
        if spec.spacing_mm is not None:
            modes = ["bilinear"] * len(
                keys
            )  # the mask too: a small organ must not vanish between grid points
            steps.append(Spacingd(keys=keys, pixdim=spec.spacing_mm, mode=modes, dtype=np.float32))
        low, high = spec.hu_window
        if spec.out_range is None:
            steps += [
                ThresholdIntensityd(keys=[IMAGE], threshold=low, above=True, cval=low),
                ThresholdIntensityd(keys=[IMAGE], threshold=high, above=False, cval=high),
            ]
        else:
            steps.append(
                ScaleIntensityRanged(
                    keys=[IMAGE],
                    a_min=low,
                    a_max=high,
                    b_min=spec.out_range[0],
                    b_max=spec.out_range[1],
                    clip=True,
                )
            )
        self._geometry = Compose(steps)
        self._crop: Any = None
        if spec.crop == "fixed":
            pads = {IMAGE: spec.pad_value, MASK: 0.0}
            if with_mask:
                self._crop = CropBoxd(keys=keys, size=spec.roi_size, pad_values=pads, center_on=MASK_CENTER)
            else:
                self._crop = ResizeWithPadOrCropd(
                    keys=[IMAGE], spatial_size=spec.full_size, value=spec.pad_value
                )

    def load(self, image: Path, mask: Path | None = None) -> dict[str, Any]:
        """Read and decompress the files (the I/O part); unreadable files raise :class:`DataError`."""
        if self.with_mask and mask is None:
            raise DataError(f"{image}: no mask given for an ROI view")
        files = {IMAGE: str(image)} | ({MASK: str(mask)} if self.with_mask else {})
        try:
            data = self._load(files)
        except Exception as exc:  # MONAI wraps reader errors in RuntimeError with the transform name
            cause = exc.__cause__ or exc
            raise DataError(f"{image}: cannot read ({type(cause).__name__}: {cause})") from exc
        if self.with_mask:
            img, msk = data[IMAGE], data[MASK]
            if tuple(img.shape) != tuple(msk.shape) or not np.allclose(_affine(img), _affine(msk), atol=1e-3):
                raise DataError(
                    f"{mask}: mask grid {tuple(msk.shape[1:])} does not match image grid {tuple(img.shape[1:])}"
                )
            lo, hi = mask_bbox(np.asarray(msk[0]) > 0.5, f"{mask}: empty mask (no foreground voxel)")
            centre_voxel = np.append((lo + hi - 1) / 2.0, 1.0)
            data[MASK_CENTER] = (_affine(msk) @ centre_voxel)[:3]
        return data

    def transform(self, data: dict[str, Any]) -> Prepared:
        """Reorient, resample, clip/scale and crop (the CPU part)."""
        source = _source_geometry(_affine(data[IMAGE]))
        data = self._geometry(data)
        grid_affine = _affine(data[IMAGE])
        shape = np.array(data[IMAGE].shape[1:])
        if isinstance(self._crop, CropBoxd):
            data = self._crop(data)
            start, end = data["crop_box"]
        elif self._crop is not None:
            size = np.asarray(self.spec.full_size)
            start = (np.maximum(size, shape) // 2 - size // 2) - np.maximum(size - shape, 0) // 2
            end = start + size
            data = self._crop(data)
        else:
            start, end = np.zeros(3, dtype=int), shape
        corners = np.stack([np.append(start, 1.0), np.append(end - 1, 1.0)]) @ grid_affine.T
        image = np.asarray(data[IMAGE][0].numpy(), dtype=np.float32)
        mask = np.asarray(data[MASK][0].numpy() > 0.5) if self.with_mask else None
        spacing = tuple(float(s) for s in np.linalg.norm(grid_affine[:3, :3], axis=0))
        return Prepared(
            image=image,
            mask=mask,
            spacing=spacing,  # type: ignore[arg-type]
            source_spacing=source[0],
            source_origin=source[1],
            source_direction=source[2],
            crop_box_voxel=tuple(int(v) for v in (*start, *end)),
            crop_box_world=tuple(round(float(v), 3) for v in corners[:, :3].ravel()),
        )

    def __call__(self, image: Path, mask: Path | None = None) -> Prepared:
        return self.transform(self.load(image, mask))
