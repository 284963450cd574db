"""Box-only resampling equals MONAI's whole-volume pipeline (reorient, resample all, scale, crop/pad).

The reference (``scripts/bench_preprocess.py``, also the benchmark's baseline) is the straightforward MONAI
recipe ctfm used before it resampled only the output box. The fast path must give the same arrays on every
geometry a scanner writes: LPS storage, oblique axes, anisotropic voxels, crops that leave the scan, native
spacing and no crop.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest

from ctfm.extract import preprocess
from ctfm.extract.preprocess import Preprocessor, resolve_spec

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_preprocess.py"


def _bench_module() -> ModuleType:
    """The benchmark script, whose MONAI whole-volume pipeline is the reference both there and here."""
    if str(SCRIPT.parent) not in sys.path:  # for its own `import benchlib`
        sys.path.append(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("bench_preprocess", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


whole_volume_reference = _bench_module().whole_volume_reference


def rotation(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def write_case(
    root: Path, shape: tuple[int, int, int], affine: np.ndarray, organ: tuple[slice, ...]
) -> tuple[Path, Path]:
    """Noise (the strictest content for interpolation) over a body, and a block mask."""
    rng = np.random.default_rng(0)
    vol = rng.integers(-1200, 1400, size=shape).astype(np.int16)
    mask = np.zeros(shape, np.uint8)
    mask[organ] = 1
    image_path, mask_path = root / "img.nii.gz", root / "mask.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), image_path)
    nib.save(nib.Nifti1Image(mask, affine), mask_path)
    return image_path, mask_path


def _affine(spacing: tuple[float, float, float], axes: np.ndarray, origin: tuple[float, ...]) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = axes * np.asarray(spacing)
    aff[:3, 3] = origin
    return aff


LPS = np.diag([-1.0, -1.0, 1.0])
GEOMETRIES = {
    "lps-anisotropic": (
        (48, 44, 20),
        _affine((0.7, 0.7, 2.5), LPS, (20.0, 18.0, -30.0)),
        np.s_[30:40, 5:15, 4:12],
    ),
    "oblique": (
        (40, 40, 24),
        _affine((1.1, 0.9, 1.6), rotation(23.0) @ LPS, (5.0, -7.0, 2.0)),
        np.s_[8:20, 20:30, 6:18],
    ),
    "permuted-axes": (
        (30, 36, 28),
        _affine((1.5, 1.2, 0.8), np.array([[0, 0, 1.0], [-1.0, 0, 0], [0, -1.0, 0]]), (0.0, 10.0, 40.0)),
        np.s_[0:6, 30:36, 20:28],  # in a corner: the crop leaves the scan on every side
    ),
}
SPECS = {
    "roi-2mm": ({"spacing_mm": [2.0, 2.0, 2.0], "roi_size": [14, 12, 10], "crop": "fixed"}, True),
    "roi-1mm-big": ({"spacing_mm": [1.0, 1.0, 1.0], "roi_size": [40, 40, 40], "crop": "fixed"}, True),
    "full-1.3mm": ({"spacing_mm": [1.3, 1.3, 1.3], "full_size": [24, 40, 16], "crop": "fixed"}, False),
    "roi-native": ({"spacing_mm": None, "roi_size": [16, 16, 16], "crop": "fixed"}, True),
    "whole-hu": ({"spacing_mm": [1.7, 1.7, 1.7], "crop": "none", "out_range": None}, True),
    "native-none": ({"spacing_mm": None, "crop": "none", "out_range": None}, False),
}


@pytest.mark.parametrize("slab", [preprocess.SLAB_VOXELS, 700])  # one slab; many, one plane or less each
@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_box_resampling_equals_whole_volume_monai(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, geometry: str, spec_name: str, slab: int
) -> None:
    monkeypatch.setattr(preprocess, "SLAB_VOXELS", slab)
    shape, affine, organ = GEOMETRIES[geometry]
    overrides, with_mask = SPECS[spec_name]
    image, mask = write_case(tmp_path, shape, affine, organ)
    spec = resolve_spec(overrides)
    got = Preprocessor(spec, with_mask=with_mask)(image, mask if with_mask else None)
    want_image, want_mask = whole_volume_reference(spec, image, mask if with_mask else None)
    assert got.image.shape == want_image.shape and got.image.dtype == np.float32
    scale = 1.0 if spec.out_range else 2000.0  # HU vs [0, 1]
    np.testing.assert_allclose(got.image, want_image, atol=2e-5 * scale, rtol=0)
    if with_mask:
        assert got.mask is not None and got.mask.shape == want_mask.shape
        # a voxel whose interpolated mask value is 0.5 within rounding may fall either way; none here
        assert np.array_equal(got.mask, want_mask)
        assert got.mask.any()
    else:
        assert got.mask is None
