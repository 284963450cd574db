"""Tiny NIfTI cases for the store/extract tests: a body, a liver-like block with a planted finding, its mask."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (40, 36, 24)
SPACING = (2.0, 2.0, 4.0)


def affine(spacing: tuple[float, float, float] = SPACING) -> np.ndarray:
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS-like storage, as many scanners write
    aff[:3, 3] = (40.0, 36.0, -48.0)
    return aff


def make_case(
    out: Path,
    case: str,
    organ_hu: int = 60,
    finding: tuple[int, int, int] | None = None,
    mask_dir: Path | None = None,
) -> tuple[Path, Path | None]:
    """Write ``images/<case>.nii.gz`` (int16 HU) and optionally ``<mask_dir>/<case>.nii.gz``.

    The organ is a block; ``finding`` plants a bright 3x3x3 spot (HU 900) at that voxel inside it.
    """
    vol = np.full(SHAPE, -1000, np.int16)
    vol[4:36, 4:32, 2:22] = 30  # body
    organ = np.zeros(SHAPE, bool)
    organ[22:34, 6:18, 6:16] = True
    vol[organ] = organ_hu
    if finding is not None:
        x, y, z = finding
        vol[x - 1 : x + 2, y - 1 : y + 2, z - 1 : z + 2] = 900
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    img_path = images / f"{case}.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine()), img_path)
    mask_path = None
    if mask_dir is not None:
        mask_dir.mkdir(parents=True, exist_ok=True)
        mask_path = mask_dir / f"{case}.nii.gz"
        nib.save(nib.Nifti1Image(organ.astype(np.uint8), affine()), mask_path)
    return img_path, mask_path
