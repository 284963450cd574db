"""Vectorised painting of primitives (ellipsoids, capsules) given in anatomy mm onto HU and label arrays,
inside their bounding boxes: no per-voxel Python."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ctfm.data.geometry import CaseGeometry, Region, Vec


class Canvas:
    """HU and label arrays plus vectorised painting of primitives given in anatomy mm."""

    def __init__(self, geo: CaseGeometry) -> None:
        self.xs, self.ys, self.zs = geo.axes_mm
        self.step = np.array([abs(float(a[1] - a[0])) if len(a) > 1 else 1.0 for a in geo.axes_mm])
        self.hu = np.full(geo.shape, -1000.0, dtype=np.float32)
        self.lab = np.zeros(geo.shape, dtype=np.uint8)
        self.free = np.zeros(geo.shape, dtype=bool)  # abdominal-cavity fat not yet taken by any structure

    def _range(self, axis: np.ndarray, lo: float, hi: float) -> slice | None:
        idx = np.flatnonzero((axis >= lo) & (axis <= hi))
        return slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else None

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        parts = [self._range(ax, lo[i], hi[i]) for i, ax in enumerate((self.xs, self.ys, self.zs))]
        return None if any(p is None for p in parts) else tuple(parts)  # type: ignore[return-value]

    def grid(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.xs[sl[0]][:, None, None], self.ys[sl[1]][None, :, None], self.zs[sl[2]][None, None, :]

    def min_radius(self, r: Vec, voxels: float = 0.8) -> np.ndarray:
        """Radii no thinner than ``voxels`` voxels, so small findings stay visible at any spacing."""
        return np.maximum(np.asarray(r, dtype=np.float64), voxels * self.step)

    def ellipsoid(self, c: Vec, r: Vec, angle: float = 0.0) -> Region | None:
        """Ellipsoid with semi-axes ``r``, rotated by ``angle`` (radians) about the z axis."""
        c, r = np.asarray(c, float), np.asarray(r, float)
        rxy = max(r[0], r[1]) if angle else None
        ext = np.array([rxy, rxy, r[2]]) if rxy else r
        sl = self.box(c - ext, c + ext)
        if sl is None:
            return None
        x, y, z = self.grid(sl)
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        if angle:
            ca, sa = np.cos(angle), np.sin(angle)
            dx, dy = dx * ca + dy * sa, -dx * sa + dy * ca
        return sl, (dx / r[0]) ** 2 + (dy / r[1]) ** 2 + (dz / r[2]) ** 2 <= 1.0

    def capsule(self, p0: Vec, p1: Vec, r: float) -> Region | None:
        p0a, p1a = np.asarray(p0, float), np.asarray(p1, float)
        sl = self.box(np.minimum(p0a, p1a) - r, np.maximum(p0a, p1a) + r)
        if sl is None:
            return None
        x, y, z = self.grid(sl)
        d = p1a - p0a
        length2 = max(float(d @ d), 1e-9)
        dx, dy, dz = x - p0a[0], y - p0a[1], z - p0a[2]
        t = np.clip((dx * d[0] + dy * d[1] + dz * d[2]) / length2, 0.0, 1.0)
        return sl, (dx - t * d[0]) ** 2 + (dy - t * d[1]) ** 2 + (dz - t * d[2]) ** 2 <= r * r

    def tube(self, points: list[Vec], r: float) -> list[Region]:
        return [reg for a, b in itertools.pairwise(points) if (reg := self.capsule(a, b, r)) is not None]

    def paint(
        self,
        region: Region | None,
        hu: float | None = None,
        label: int | None = None,
        inside: tuple[int, ...] | None = None,
        free_only: bool = False,
        body_only: bool = False,
    ) -> int:
        """Set HU and the label where the region (optionally restricted) is; returns the voxels painted."""
        if region is None:
            return 0
        sl, mask = region
        mask = np.broadcast_to(mask, self.hu[sl].shape)
        if inside is not None:
            mask = mask & np.isin(self.lab[sl], inside)
        if free_only:
            mask = mask & self.free[sl]
        if body_only:
            mask = mask & (self.hu[sl] > -990)
        if hu is not None:
            self.hu[sl][mask] = hu
        if label is not None:
            self.lab[sl][mask] = label
            self.free[sl][mask] = False
        return int(mask.sum())

    def index_of(self, p: Vec) -> tuple[int, int, int] | None:
        out = []
        for ax, v in zip((self.xs, self.ys, self.zs), p, strict=True):
            i = round((v - float(ax[0])) / float(ax[1] - ax[0])) if len(ax) > 1 else 0
            if not 0 <= i < len(ax):
                return None
            out.append(i)
        return tuple(out)  # type: ignore[return-value]

    def point_in(
        self, rng: np.random.Generator, labels: tuple[int, ...], c: Vec, r: Vec, frac: float = 0.65
    ) -> Vec | None:
        """A random point inside an organ: sampled in its ellipsoid, accepted where the label map agrees."""
        for _ in range(40):
            v = rng.normal(size=3)
            v *= rng.random() ** (1 / 3) / np.linalg.norm(v)
            p = tuple(float(x) for x in np.asarray(c) + frac * np.asarray(r) * v)
            idx = self.index_of(p)
            if idx is not None and self.lab[idx] in labels:
                return p  # type: ignore[return-value]
        return None


@dataclass
class Organ:
    c: Vec
    r: Vec
    angle: float = 0.0
