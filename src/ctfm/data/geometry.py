"""How a synthetic case is scanned: shapes (spacing, matrix), per-case body size, field of view and affine.

Coordinates are "anatomy millimetres" of an adult abdomen in patient RAS (+x patient's right, +y anterior,
+z superior, origin at the body centre, L1 at z = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Vec = tuple[float, float, float]
Region = tuple[tuple[slice, slice, slice], np.ndarray]


@dataclass(frozen=True)
class ShapeSpec:
    """How a case is scanned: spacing ranges (mm) and optionally a fixed in-plane matrix."""

    name: str
    inplane_mm: tuple[float, float]
    slice_mm: tuple[float, float]
    matrix: int | None = None


SHAPES: dict[str, ShapeSpec] = {
    "demo": ShapeSpec("demo", inplane_mm=(2.6, 3.2), slice_mm=(5.0, 6.5)),
    "full": ShapeSpec("full", inplane_mm=(0.6, 0.9), slice_mm=(1.5, 5.0), matrix=512),
}

VERTEBRA_LEVELS = ("T8", "T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1")
LEVEL_MM = 32.0  # one vertebral body plus disc, anatomy mm


@dataclass
class CaseGeometry:
    """Voxel grid of one case: matrix size, spacing (mm), RAS affine and patient-frame coordinates per axis."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    axes_mm: tuple[np.ndarray, np.ndarray, np.ndarray]  # anatomy mm of each voxel index along x, y, z
    body: dict[str, float]


def case_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent streams for geometry/anatomy, findings and noise, derived from (seed, case index) only."""
    children = np.random.SeedSequence([int(seed), int(index)]).spawn(3)
    return tuple(np.random.default_rng(c) for c in children)  # type: ignore[return-value]


def case_geometry(rng: np.random.Generator, spec: ShapeSpec) -> CaseGeometry:
    """Per-case body size, field of view, anisotropic spacing and a non-identity affine (flips, offsets)."""
    bx, by = rng.uniform(0.92, 1.08), rng.uniform(0.9, 1.1)
    fat, muscle = rng.uniform(8, 38), rng.uniform(8, 14)
    body = {
        "bx": bx,
        "by": by,
        "cav_a": 135 * bx,
        "cav_b": 88 * by,
        "muscle": muscle,
        "fat": fat,
        "z_top": rng.uniform(110, 170),
        "z_bot": rng.uniform(-245, -165),
    }
    half_w = body["cav_a"] + muscle + fat
    half_d = body["cav_b"] + muscle + fat
    if spec.matrix:
        sxy = max(rng.uniform(*spec.inplane_mm), 2 * half_w * 1.08 / spec.matrix)
        sx = sy = sxy
        nx = ny = spec.matrix
    else:
        sx = sy = rng.uniform(*spec.inplane_mm)
        nx = int(np.ceil(2 * half_w * rng.uniform(1.04, 1.15) / sx))
        ny = int(np.ceil(2 * half_d * rng.uniform(1.08, 1.3) / sy))
    sz = rng.uniform(*spec.slice_mm)
    nz = int(np.ceil((body["z_top"] - body["z_bot"]) / sz))
    # Storage orientation: mostly LPS-like (x, y flipped in RAS), sometimes RAS, sometimes inferior-first.
    signs = np.array(
        [
            -1.0 if rng.random() < 0.7 else 1.0,
            -1.0 if rng.random() < 0.7 else 1.0,
            1.0 if rng.random() < 0.8 else -1.0,
        ]
    )
    spacing = np.array([sx, sy, sz])
    shape = (nx, ny, nz)
    centre_mm = np.array(
        [rng.uniform(-6, 6), rng.uniform(-4, 10), (body["z_top"] + body["z_bot"]) / 2]
    )  # FOV centre in patient mm
    table = np.array([rng.uniform(-40, 40), rng.uniform(-260, -120), rng.uniform(-900, 200)])
    steps = signs * spacing
    first = centre_mm - steps * (np.array(shape) - 1) / 2
    affine = np.eye(4)
    affine[:3, :3] = np.diag(steps)
    affine[:3, 3] = first + table
    axes = tuple((first[a] + steps[a] * np.arange(shape[a])).astype(np.float32) for a in range(3))
    return CaseGeometry(
        shape=shape,
        spacing=(float(sx), float(sy), float(sz)),
        affine=affine,
        axes_mm=axes,  # type: ignore[arg-type]
        body=body,
    )
