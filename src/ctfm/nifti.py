"""Reading and writing NIfTI volumes with nibabel, with errors that name the file."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ctfm.errors import DataError
from ctfm.fsutil import atomic_path

NII_SUFFIX = ".nii.gz"


def case_id(path: Path | str) -> str:
    """Case name as the benchmark uses it: the file name without ``.nii.gz`` (or ``.nii``)."""
    name = Path(path).name
    for suffix in (NII_SUFFIX, ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def list_volumes(folder: Path) -> list[Path]:
    """NIfTI files directly in ``folder``, sorted by name, ignoring hidden temporaries."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.endswith((NII_SUFFIX, ".nii"))
    )


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a volume: enough to tell whether two volumes are aligned."""

    shape: tuple[int, ...]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    def matches(self, other: Geometry, atol: float = 1e-3) -> bool:
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol)

    def describe(self) -> str:
        return f"shape {self.shape}, spacing {tuple(round(s, 3) for s in self.spacing)}"


def load(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI header (data stays lazy); a missing or non-NIfTI file raises :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad headers
        raise DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc


def geometry(path: Path) -> Geometry:
    img = load(path)
    return Geometry(
        shape=tuple(int(s) for s in img.shape[:3]), affine=np.asarray(img.affine, dtype=np.float64)
    )


def read_array(path: Path, dtype: np.dtype | type | None = None) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read the full voxel array, in its stored dtype unless ``dtype`` is given (no float64 detour)."""
    img = load(path)
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, OSError, ValueError) as exc:
        raise DataError(f"{path}: truncated or corrupt NIfTI data ({type(exc).__name__}: {exc})") from exc
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return data, img


def write(path: Path, data: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None = None) -> Path:
    """Write a volume atomically. nibabel gzips at level 1 by default, the fast end of the trade-off."""
    img = nib.Nifti1Image(data, affine, header=header)
    img.set_data_dtype(data.dtype)
    if header is None:
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    with atomic_path(Path(path)) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
