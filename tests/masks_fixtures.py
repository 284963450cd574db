"""Anatomical label-map phantoms for the masks tests: TotalSegmentator v2 ids, renumbered to v1, cropped."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ctfm.core.benchmark import load_benchmark

# (v2 class name, centre mm RAS, radii mm): a coarse torso, liver centroid near z=20, lumbar spine below it,
# thoracic spine and lung lobes above, ribs (ids > 104 in v2) high up. Drawn in order: later wins overlaps.
ORGANS: list[tuple[str, tuple[float, float, float], tuple[float, float, float]]] = [
    ("lung_upper_lobe_left", (60, 0, 150), (50, 60, 60)),
    ("lung_lower_lobe_left", (60, 20, 100), (50, 60, 50)),
    ("lung_upper_lobe_right", (-60, 0, 150), (50, 60, 60)),
    ("lung_middle_lobe_right", (-60, -30, 115), (40, 30, 30)),
    ("lung_lower_lobe_right", (-60, 20, 100), (50, 60, 50)),
    ("liver", (-50, 0, 20), (70, 60, 70)),
    ("spleen", (70, 20, 30), (30, 25, 50)),
    ("kidney_right", (-50, 45, -40), (25, 25, 50)),
    ("kidney_left", (50, 45, -30), (25, 25, 50)),
    ("gallbladder", (-30, -45, -25), (15, 15, 30)),
    ("adrenal_gland_right", (-40, 45, 30), (8, 6, 12)),
    ("adrenal_gland_left", (40, 45, 40), (8, 6, 12)),
    ("pancreas", (10, 15, -35), (50, 12, 12)),
    ("aorta", (10, 60, 20), (10, 10, 150)),
    ("inferior_vena_cava", (-20, 60, 0), (12, 12, 120)),
    ("portal_vein_and_splenic_vein", (-15, 15, 5), (12, 12, 60)),
    ("rib_left_5", (100, 0, 160), (10, 60, 8)),
    ("rib_right_5", (-100, 0, 160), (10, 60, 8)),
    *[
        (f"vertebrae_{name}", (0, 80, z), (15, 15, 11))
        for name, z in zip(
            ["L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9", "T8", "T7", "T6", "T5", "T4"],
            range(-160, 260, 28),
            strict=False,
        )
    ],
]


def phantom(
    spacing: tuple[float, float, float] = (4.0, 4.0, 5.0),
    extent_mm: tuple[float, float, float] = (260.0, 220.0, 440.0),
    organs: list[tuple[str, tuple[float, float, float], tuple[float, float, float]]] | None = None,
    skip: tuple[str, ...] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """A v2-numbered int16 label map centred on the origin, and its RAS affine (axis-aligned)."""
    ids = load_benchmark().class_map("v2").ids
    shape = tuple(round(e / s) for e, s in zip(extent_mm, spacing, strict=True))
    origin = [-(n - 1) * s / 2 for n, s in zip(shape, spacing, strict=True)]
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    coords = [origin[a] + np.arange(shape[a]) * spacing[a] for a in range(3)]
    x, y, z = np.meshgrid(*coords, indexing="ij", sparse=True)
    label = np.zeros(shape, np.int16)
    for name, centre, radii in organs if organs is not None else ORGANS:
        if name in skip:
            continue
        inside = sum(((c - m) / r) ** 2 for c, m, r in zip((x, y, z), centre, radii, strict=True)) <= 1
        label[inside] = ids[name]
    return label, affine


def to_v1(label: np.ndarray) -> np.ndarray:
    """The same anatomy numbered like TotalSegmentator v1 (remapped by class name; v2-only classes -> 0)."""
    bench = load_benchmark()
    v1 = bench.class_map("v1").ids
    lut = np.zeros(max(bench.class_map("v2").names) + 1, np.int16)
    for i, name in bench.class_map("v2").names.items():
        lut[i] = v1.get(name, 0)
    return lut[label]


def crop_z(
    label: np.ndarray, affine: np.ndarray, z_min: float, z_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the slices whose world z lies in [z_min, z_max] (e.g. an abdominal field of view)."""
    z = affine[2, 3] + affine[2, 2] * np.arange(label.shape[2])
    keep = np.flatnonzero((z >= z_min) & (z <= z_max))
    out = affine.copy()
    out[2, 3] = z[keep[0]]
    return label[:, :, keep[0] : keep[-1] + 1].copy(), out


def save(label: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(label, affine)
    img.set_data_dtype(label.dtype)
    nib.save(img, str(path))
    return path


def save_folder(
    label: np.ndarray,
    affine: np.ndarray,
    folder: Path,
    names: list[str] | None = None,
    suffix: str = ".nii.gz",
) -> Path:
    """TotalSegmentator's default layout: one binary ``<class>.nii.gz`` (or ``suffix``) per class present."""
    cmap = load_benchmark().class_map("v2")
    present = names if names is not None else [cmap.names[int(i)] for i in np.unique(label) if i]
    for name in present:
        save((label == cmap.ids[name]).astype(np.uint8), affine, folder / f"{name}{suffix}")
    return folder


def expected_masks(label: np.ndarray, diseases: list[str] | None = None) -> dict[str, np.ndarray]:
    """Independent reference: per disease, OR of ``label == id`` over its organs (the reference script's way)."""
    bench = load_benchmark()
    ids = bench.class_map("v2").ids
    out = {}
    for disease in diseases or list(bench.roi_diseases):
        mask = np.zeros(label.shape, np.uint8)
        for organ in bench.roi_organs(disease):
            mask[label == ids[organ]] = 1
        out[disease] = mask
    return out
