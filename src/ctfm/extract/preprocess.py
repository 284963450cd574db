"""Preprocessing: read, reorient to RAS, resample, clip/scale HU, fixed-size crop.

The recipe follows the baseline containers (benchmark facts): the whole scan padded/cropped to a fixed size, or
a fixed-size crop centred on the mask's bounding box. Defaults come from the ``preprocess`` section of
``configs/benchmark.yaml``; each extractor overrides what it needs (``Extractor.preprocess``), e.g. ``cnn3d`` at
3 mm and a small size so the CPU demo stays fast, ``hu-stats`` at native spacing without a crop.

A real scan (512 x 512 x 400 voxels) is far larger than what a model sees, so the crop comes first: the output
box is placed on the grid MONAI's ``Spacing`` would resample the whole scan to, and only that box is resampled
(MONAI ``SpatialResample``, same interpolation), from the source voxels around it, read in their stored dtype.
The values equal resampling the whole volume and then cropping (tested against that MONAI pipeline) at a
fraction of the time and memory.

Reading (``load``) and the rest (``transform``) are separate steps so the runner can time them apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Spacing, SpatialResample

from ctfm.core import nifti
from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import ConfigError, DataError

CROPS = ("fixed", "none")
# output voxels resampled at a time: bounds the resampler's coordinate grid (~64 MiB) and its source copy
SLAB_VOXELS = 1 << 22


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


@dataclass
class Loaded:
    """A case as read from disk: arrays in their stored dtype and orientation (possibly read-only views)."""

    image: np.ndarray  # [X, Y, Z]
    affine: np.ndarray
    mask: np.ndarray | None = None  # [X, Y, Z], same grid as the image
    center_world: np.ndarray | None = None  # centre of the mask's bounding box, world mm


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


def _source_geometry(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    spacing = nifti.voxel_spacing(affine)
    direction = affine[:3, :3] / np.asarray(spacing)
    return (
        tuple(round(float(s), 6) for s in spacing),
        tuple(round(float(o), 4) for o in affine[:3, 3]),
        tuple(round(float(v), 6) for v in direction.ravel()),
    )


def _shifted(affine: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """The affine of a sub-grid whose first voxel is ``voxels`` of ``affine``'s grid."""
    out = affine.copy()
    out[:3, 3] = affine[:3, :3] @ np.asarray(voxels, dtype=np.float64) + affine[:3, 3]
    return out


def ras_orientation(
    affine: np.ndarray, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """(nibabel orientation, affine, shape) of the closest RAS axes, as MONAI's ``Orientation`` and nibabel's
    ``as_closest_canonical`` reorient."""
    ornt = nib.orientations.io_orientation(affine)
    ras_shape = tuple(int(shape[int(axis)]) for axis in np.argsort(ornt[:, 0]))
    return ornt, affine @ nib.orientations.inv_ornt_aff(ornt, shape), ras_shape


def _corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The 8 corner voxels (homogeneous, [8, 4]) of the box ``[lo, hi)``."""
    axes = [(lo[k], hi[k] - 1) for k in range(3)]
    return np.array([[x, y, z, 1.0] for x in axes[0] for y in axes[1] for z in axes[2]])


def _slices(lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...]:
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


class Preprocessor:
    """Reading and preprocessing for one (spec, with/without mask) combination. Picklable, so loader workers
    can run it."""

    def __init__(self, spec: PreprocessSpec, with_mask: bool) -> None:
        self.spec = spec
        self.with_mask = with_mask
        # the mask is interpolated too (bilinear, then > 0.5), so a small organ does not vanish between grid points
        self._resample = SpatialResample(mode="bilinear", padding_mode="border", dtype=np.float32)

    def load(self, image: Path, mask: Path | None = None) -> Loaded:
        """Read and decompress the files (the I/O part); unreadable files raise :class:`DataError`."""
        if self.with_mask and mask is None:
            raise DataError(f"{image}: no mask given for an ROI view")
        loaded = load_image(image)
        return add_mask(loaded, mask) if self.with_mask and mask is not None else loaded

    def transform(self, loaded: Loaded) -> Prepared:
        """Reorient, resample, clip/scale and crop (the CPU part)."""
        source = _source_geometry(loaded.affine)
        ornt, ras_affine, ras_shape = ras_orientation(loaded.affine, loaded.image.shape)
        if self.spec.spacing_mm is None:  # the grid is the scan's own, reoriented: slicing, no interpolation
            grid_affine, grid_shape = ras_affine, np.array(ras_shape)
        else:
            grid_affine, grid_shape = self._grid(ras_affine, ras_shape)
        start, end = self._box(grid_affine, grid_shape, loaded.center_world)
        lo, hi = np.clip(start, 0, grid_shape), np.clip(end, 0, grid_shape)

        def sample(array: np.ndarray) -> np.ndarray:
            if self.spec.spacing_mm is None:
                return nib.orientations.apply_orientation(array, ornt)[_slices(lo, hi)]
            return self._sample(array, loaded.affine, grid_affine, lo, hi)

        image = self._intensity(np.array(sample(loaded.image), dtype=np.float32, order="K"))
        mask = None if loaded.mask is None else sample(loaded.mask) > 0.5
        if (lo != start).any() or (hi != end).any():  # the box leaves the grid: pad with air
            inner = _slices(lo - start, hi - start)
            image, mask = (
                _padded(image, end - start, self.spec.pad_value, inner),
                _padded(mask, end - start, False, inner),
            )
        corners = np.stack([np.append(start, 1.0), np.append(end - 1, 1.0)]) @ grid_affine.T
        spacing = nifti.voxel_spacing(grid_affine)
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

    def _grid(self, ras_affine: np.ndarray, ras_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Affine and shape of the grid the whole reoriented scan would be resampled to: MONAI ``Spacing``'s
        own choice, asked lazily of a stand-in tensor (nothing is computed)."""
        stand_in = MetaTensor(
            torch.zeros((1, 1, 1, 1)).expand(1, *ras_shape), affine=torch.as_tensor(ras_affine)
        )
        planned = Spacing(pixdim=self.spec.spacing_mm, lazy=True)(stand_in)  # type: ignore[arg-type]
        assert isinstance(planned, MetaTensor)
        grid = np.asarray(planned.peek_pending_affine(), dtype=np.float64)
        return grid, np.array([int(s) for s in planned.peek_pending_shape()])

    def _box(
        self, grid_affine: np.ndarray, grid_shape: np.ndarray, center_world: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``[start, end)`` of the output in grid voxels; it may leave the grid (padded with air)."""
        if self.spec.crop == "none":
            return np.zeros(3, dtype=int), grid_shape.astype(int)
        if center_world is not None:  # ROI: centred on the mask (world mm, measured before resampling)
            center = np.rint((np.linalg.inv(grid_affine) @ np.append(center_world, 1.0))[:3]).astype(int)
            return centred_box(center, self.spec.roi_size)
        size = np.asarray(self.spec.full_size)  # whole scan: centred, as MONAI's ResizeWithPadOrCrop does
        start = (np.maximum(size, grid_shape) // 2 - size // 2) - np.maximum(size - grid_shape, 0) // 2
        return start.astype(int), (start + size).astype(int)

    def _sample(
        self, array: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> np.ndarray:
        """float32 values of ``array`` (as stored, on ``affine``'s grid) at grid voxels ``[lo, hi)``, resampled
        slab by slab along the last axis so the resampler's coordinate grid stays small."""
        out = np.empty(tuple(int(v) for v in hi - lo), dtype=np.float32)
        step = max(1, SLAB_VOXELS // int(np.prod(hi[:2] - lo[:2])))
        for z0 in range(int(lo[2]), int(hi[2]), step):
            a, b = lo.copy(), hi.copy()
            a[2], b[2] = z0, min(z0 + step, int(hi[2]))
            out[:, :, a[2] - lo[2] : b[2] - lo[2]] = self._resample_box(array, affine, grid_affine, a, b)
        return out

    def _resample_box(
        self, array: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> np.ndarray:
        """The resampler maps the grid box straight onto the stored voxels, so the scan is never reoriented or
        converted as a whole: only the source voxels around the box are, with one voxel of margin (all bilinear
        interpolation reads); at the scan's edge MONAI's border padding sees the same edge voxels."""
        src = (np.linalg.inv(affine) @ (_corners(lo, hi) @ grid_affine.T).T)[:3]
        shape = np.array(array.shape)
        src_lo = np.clip(np.floor(src.min(axis=1)).astype(int) - 1, 0, shape - 1)
        src_hi = np.clip(np.ceil(src.max(axis=1)).astype(int) + 2, src_lo + 1, shape)
        region = np.array(array[_slices(src_lo, src_hi)], dtype=np.float32, order="K")
        sub = MetaTensor(torch.from_numpy(region)[None], affine=torch.as_tensor(_shifted(affine, src_lo)))
        out = self._resample(
            sub, dst_affine=torch.as_tensor(_shifted(grid_affine, lo)), spatial_size=(hi - lo).tolist()
        )
        return out[0].numpy()

    def _intensity(self, image: np.ndarray) -> np.ndarray:
        """HU clipped to the window, then (``out_range``) scaled linearly, in place: MONAI's
        ``ScaleIntensityRange(clip=True)`` / ``ThresholdIntensity`` arithmetic without their copies."""
        low, high = self.spec.hu_window
        if self.spec.out_range is None:
            return np.clip(image, low, high, out=image)
        b_min, b_max = self.spec.out_range
        image -= low
        image /= high - low
        image *= b_max - b_min
        image += b_min
        return np.clip(image, b_min, b_max, out=image)


def load_image(path: Path) -> Loaded:
    """A scan as stored (the I/O part, shared by every view of a case); unreadable files, a voxel size that
    cannot be right and NaN or infinite voxels raise DataError (an embedding of them would be meaningless)."""
    data, img = _read(path)
    problem = nifti.voxel_problem(img) or nifti.nonfinite_problem(data)
    if problem:
        raise DataError(f"{path}: {problem}")
    return Loaded(image=data, affine=np.asarray(img.affine, dtype=np.float64))


def add_mask(loaded: Loaded, mask: Path) -> Loaded:
    """The scan with an ROI view's mask (same grid, checked) and the mask's centre; the image is shared."""
    data, img = _read(mask)
    own = nifti.Geometry(data.shape, np.asarray(img.affine, dtype=np.float64))
    image = nifti.Geometry(loaded.image.shape, loaded.affine)
    if not own.matches(image):
        raise DataError(f"{mask}: mask grid differs from its image's: {own.describe()} vs {image.describe()}")
    lo, hi = mask_bbox(data > 0.5, f"{mask}: empty mask (no foreground voxel)")
    center = (loaded.affine @ np.append((lo + hi - 1) / 2.0, 1.0))[:3]
    return dataclasses.replace(loaded, mask=data, center_world=center)


def _padded(values: np.ndarray | None, size: np.ndarray, fill: float | bool, inner: tuple[slice, ...]) -> Any:
    if values is None:
        return None
    out = np.full(tuple(int(s) for s in size), fill, dtype=values.dtype)
    out[inner] = values
    return out


def _read(path: Path) -> tuple[np.ndarray, Any]:
    """A volume in its stored dtype and layout, and its image; unreadable files raise :class:`DataError`."""
    try:
        data, img = nifti.read_image_fast(path)
    except DataError as exc:
        cause = exc.__cause__
        if cause is None:  # e.g. "file not found": already one clear line
            raise
        raise DataError(f"{path}: cannot read ({type(cause).__name__}: {cause})") from exc
    return nifti.as_volume(data, path), img
