"""One synthetic abdominal CT case: anatomy, planted findings, noise.

The anatomy is described in "anatomy millimetres" of an adult abdomen in patient RAS coordinates (+x towards the
patient's right, +y anterior, +z superior, origin at the body centre, L1 at z = 0). Every shape is an adult-size
patient: the demo shape scans it on a coarse grid (about 3 mm in-plane, 5-6.5 mm slices, as a thick-slice
reconstruction), so volumes stay small while organs and findings keep their real size in mm, which is what
extractors resampling to a few mm see.
Everything is painted with vectorised ellipsoids and capsules inside their bounding boxes: no per-voxel Python.

Example:
    >>> ph = render_case(seed=0, index=3, shape="demo", labels={"gallstone": 1}, class_ids=ids)  # doctest: +SKIP
    >>> ph.image.dtype, ph.labelmap.dtype  # doctest: +SKIP
    (dtype('int16'), dtype('uint8'))
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

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


@dataclass
class Phantom:
    """A rendered case: int16 HU image, uint8 TotalSegmentator v2 map, affine and what was planted."""

    image: np.ndarray
    labelmap: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    findings: dict[str, str] = field(default_factory=dict)


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


class _Builder:
    """Paints one case. Order matters: later structures overwrite earlier ones (painter's algorithm)."""

    def __init__(
        self,
        geo: CaseGeometry,
        anat: np.random.Generator,
        find: np.random.Generator,
        labels: Mapping[str, int],
        ids: Mapping[str, int],
    ) -> None:
        self.geo, self.b, self.rng, self.frng = geo, geo.body, anat, find
        self.pos = {d for d, v in labels.items() if int(v)}
        self.ids = ids
        self.cv = Canvas(geo)
        self.organs: dict[str, Organ] = {}
        self.findings: dict[str, str] = {}
        contrast = 0.0 if anat.random() < 0.3 else anat.uniform(0.5, 1.0)
        j = anat.normal
        self.HU = {
            "fat": -100 + 8 * j(),
            "vfat": -92 + 8 * j(),
            "muscle": 45 + 10 * contrast + 4 * j(),
            "liver": 58 + 45 * contrast + 5 * j(),
            "spleen": 48 + 65 * contrast + 5 * j(),
            "kidney": 32 + 130 * contrast + 5 * j(),
            "medulla": 30 + 70 * contrast,
            "pancreas": 42 + 45 * contrast + 4 * j(),
            "adrenal": 32 + 35 * contrast,
            "artery": 42 + 170 * contrast + 5 * j(),
            "vein": 40 + 110 * contrast + 5 * j(),
            "wall": 38 + 50 * contrast,
            "bile": 8 + 3 * j(),
            "urine": 8 + 3 * j(),
            "fluid": 12 + 4 * j(),
            "lung": -860 + 20 * j(),
            "air": -950,
            "bone": 220 + 30 * j(),
            "cortex": 650 + 60 * j(),
            "cord": 30,
            "heart": 42 + 120 * contrast,
            "node": 40 + 40 * contrast,
        }
        self.noise_sd = anat.uniform(8, 18)
        self.y_vb = -self.b["cav_b"] + 22 * self.b["by"]  # vertebral body centre (anatomy mm)

    # ----------------------------------------------------------------- helpers
    def id(self, name: str) -> int:
        return self.ids[name]

    def jit(self, c: Vec, mm: float = 6.0) -> Vec:
        bx, by = self.b["bx"], self.b["by"]
        n = self.rng.normal(0, mm / 2, 3)
        return (c[0] * bx + n[0], c[1] * by + n[1], c[2] + n[2])

    def size(self, r: Vec, sd: float = 0.08) -> Vec:
        f = np.clip(self.rng.normal(1.0, sd), 0.8, 1.2)
        return tuple(float(x * f * np.clip(self.rng.normal(1, 0.04), 0.9, 1.1)) for x in r)  # type: ignore[return-value]

    def organ(self, name: str, c: Vec, r: Vec, angle: float = 0.0, scale: float = 1.0) -> Organ:
        o = Organ(self.jit(c), tuple(x * scale for x in self.size(r)), angle + self.rng.normal(0, 0.08))  # type: ignore[arg-type]
        self.organs[name] = o
        return o

    def ell(self, o: Organ, grow: float = 1.0, shrink_mm: float = 0.0) -> Region | None:
        r = tuple(max(x * grow - shrink_mm, 0.5) for x in o.r)
        return self.cv.ellipsoid(o.c, r, o.angle)  # type: ignore[arg-type]

    # ----------------------------------------------------------------- anatomy
    def body(self) -> None:
        cv, b = self.cv, self.b
        x, y = cv.xs[:, None], cv.ys[None, :]
        a_in, b_in = b["cav_a"], b["cav_b"]
        ring = [
            (a_in + b["muscle"] + b["fat"], b_in + b["muscle"] + b["fat"], self.HU["fat"], False),
            (a_in + b["muscle"], b_in + b["muscle"], self.HU["muscle"], False),
            (a_in, b_in, self.HU["vfat"], True),
        ]
        for a, bb, hu, free in ring:
            m2 = (x / a) ** 2 + ((y + 0.08 * bb * (y < 0)) / bb) ** 2 <= 1.0
            cv.hu[m2] = hu
            cv.free[m2] = free

    def lungs_heart(self) -> None:
        cv, b = self.cv, self.b
        zr, zl = self.rng.uniform(118, 135), self.rng.uniform(105, 122)
        self.dome = (zr, zl)
        lo = min(zr, zl) - 75
        sl = cv.box(np.array([-1e4, -1e4, lo]), np.array([1e4, 1e4, 1e4]))
        if sl is None:
            return
        x, y, z = cv.grid(sl)
        top = np.where(x > 0, zr, zl)
        dome = (
            top
            - 55 * ((np.abs(x) - 70 * b["bx"]) / (85 * b["bx"])) ** 2
            - 45 * ((y + 5) / (80 * b["by"])) ** 2
        )
        cav = (x / b["cav_a"]) ** 2 + (y / b["cav_b"]) ** 2 <= 0.97
        above = cav & (z > dome)
        medi = ((x + 12) / (42 * b["bx"])) ** 2 + ((y - 12) / (62 * b["by"])) ** 2 < 1.0
        right = x > 0
        ant = y > 12 * b["by"]
        lung = above & ~medi
        region_sets = [
            (lung & right & ~ant, "lung_lower_lobe_right"),
            (lung & right & ant, "lung_middle_lobe_right"),
            (lung & ~right, "lung_lower_lobe_left"),
        ]
        for mask, name in region_sets:
            self.cv.paint((sl, mask), self.HU["lung"], self.id(name))
        heart = above & medi & (z > top + 10)
        self.cv.paint((sl, heart), self.HU["heart"], self.id("heart"))
        eso = self.jit((-12, -45, 0), 3)
        self.cv.paint(
            cv.capsule((eso[0], eso[1], 95), (eso[0] - 10, eso[1] + 8, 400), 7),
            self.HU["wall"],
            self.id("esophagus"),
        )

    def spine(self) -> None:
        cv, b = self.cv, self.b
        y_vb = self.y_vb
        x0 = self.rng.normal(0, 2)
        for i, level in enumerate(VERTEBRA_LEVELS):
            z = (5 - i) * LEVEL_MM  # L1 (index 5) at z = 0
            lid = self.id(f"vertebrae_{level}")
            cv.paint(cv.ellipsoid((x0, y_vb, z), (24, 18, 12.5)), self.HU["cortex"], lid)
            cv.paint(cv.ellipsoid((x0, y_vb, z), (20, 14.5, 11.5)), self.HU["bone"], lid)
            cv.paint(cv.ellipsoid((x0, y_vb - 34, z - 4), (6, 14, 10)), self.HU["cortex"] * 0.8, lid)
            cv.paint(
                cv.ellipsoid((x0, y_vb - 24, z), (34 if level[0] == "L" else 22, 6, 7)),
                self.HU["cortex"] * 0.7,
                lid,
            )
            cv.paint(cv.ellipsoid((x0, y_vb, z + 16), (21, 16, 3.5)), 80.0, 0)  # intervertebral disc
        cv.paint(
            cv.ellipsoid((x0, y_vb - 15, -205), (48, 22, 38), 0.0), self.HU["bone"] * 1.2, self.id("sacrum")
        )
        cv.paint(
            cv.capsule((x0, y_vb - 25, -150), (x0, y_vb - 25, 400), 7),
            self.HU["cord"],
            self.id("spinal_cord"),
        )
        for side, sign in (("left", -1), ("right", 1)):
            cv.paint(
                cv.capsule(
                    (sign * 34 * b["bx"], y_vb - 34, -150),
                    (sign * 34 * b["bx"], y_vb - 34, 400),
                    21 * b["by"],
                ),
                self.HU["muscle"],
                self.id(f"autochthon_{side}"),
                inside=(0,),
                body_only=True,
            )
            top, bot = (sign * 30, y_vb + 5, 10), (sign * 62 * b["bx"], y_vb + 30, -200)
            for t0, t1 in ((0.0, 0.5), (0.5, 1.0)):
                p0 = tuple(top[k] + t0 * (bot[k] - top[k]) for k in range(3))
                p1 = tuple(top[k] + t1 * (bot[k] - top[k]) for k in range(3))
                cv.paint(
                    cv.capsule(p0, p1, 9 + 14 * t1),
                    self.HU["muscle"],
                    self.id(f"iliopsoas_{side}"),
                    body_only=True,
                )
            hip = cv.ellipsoid((sign * 105 * b["bx"], y_vb + 10, -185), (9, 55, 48), sign * 0.5)
            cv.paint(hip, self.HU["cortex"] * 0.6, self.id(f"hip_{side}"), body_only=True)

    def ribs(self) -> None:
        """Ribs 1-12 both sides in one pass: a rib is a band in the body wall descending anteriorly."""
        cv, b = self.cv, self.b
        rx, ry = b["cav_a"] + b["muscle"] * 0.4, b["cav_b"] + b["muscle"] * 0.4
        x, y = cv.xs[:, None], cv.ys[None, :]
        rr = np.sqrt((x / rx) ** 2 + (y / ry) ** 2)
        ring = np.abs(rr - 1.0) * (rx + ry) / 2 < 5.5
        ii, jj = np.nonzero(ring)
        if ii.size == 0:
            return
        phi = np.abs(np.arctan2(x / rx, -y / ry))[ii, jj]
        right = cv.xs[ii] > 0
        drop = self.rng.uniform(40, 50)
        kf = 13 - (cv.zs[None, :] + drop * phi[:, None]) / LEVEL_MM  # (n_ring, nz)
        k = np.rint(kf)
        near = np.abs(kf - k) * LEVEL_MM < 6.5
        phi_max = np.select([k <= 7, k <= 10, k == 11], [2.55, 2.3, 1.6], 1.1)
        ok = near & (k >= 1) & (k <= 12) & (phi[:, None] > 0.5)
        bone = ok & (phi[:, None] <= phi_max)
        cart = ok & (k <= 10) & (phi[:, None] > phi_max) & (phi[:, None] <= phi_max + 0.45)
        rib_ids = np.zeros((2, 13), dtype=np.uint8)
        for n in range(1, 13):
            rib_ids[0, n] = self.id(f"rib_left_{n}")
            rib_ids[1, n] = self.id(f"rib_right_{n}")
        r_idx, z_idx = np.nonzero(bone)
        lab = rib_ids[right[r_idx].astype(int), k[r_idx, z_idx].astype(int)]
        cv.hu[ii[r_idx], jj[r_idx], z_idx] = self.HU["cortex"] * 0.85
        cv.lab[ii[r_idx], jj[r_idx], z_idx] = lab
        r_idx, z_idx = np.nonzero(cart)
        cv.hu[ii[r_idx], jj[r_idx], z_idx] = 120.0
        cv.lab[ii[r_idx], jj[r_idx], z_idx] = self.id("costal_cartilages")

    def bowel(self) -> None:
        cv, H = self.cv, self.HU
        sb = self.id("small_bowel")
        n_loops = int(self.rng.integers(14, 24))
        for _ in range(n_loops):
            c = (self.rng.uniform(-70, 55), self.rng.uniform(-5, 65), self.rng.uniform(-150, -35))
            c2 = tuple(c[k] + self.rng.uniform(-30, 30) for k in range(3))
            r = self.rng.uniform(9, 13)
            for reg in cv.tube([c, c2], r):
                cv.paint(reg, H["wall"], sb, free_only=True)
            for reg in cv.tube([c, c2], r - 3):
                cv.paint(reg, H["fluid"] + 10, sb, inside=(sb,))
        # colon: caecum -> ascending -> transverse -> descending -> sigmoid -> rectum
        path = [
            self.jit((95, 15, -125)),
            self.jit((100, 5, -15)),
            self.jit((70, 55, -5)),
            self.jit((0, 62, -25)),
            self.jit((-75, 50, 5)),
            self.jit((-105, -5, -10)),
            self.jit((-100, 0, -120)),
            self.jit((-45, 20, -175)),
            self.jit((0, -50, -215)),
            self.jit((0, -55, -300)),
        ]
        self.colon_path = path
        r = self.rng.uniform(19, 24)
        self.colon_r = r
        co = self.id("colon")
        for reg in cv.tube(path, r):
            cv.paint(reg, H["wall"], co, inside=(0, sb))
        for reg in cv.tube(path, r - 3.5):
            cv.paint(reg, float(self.rng.uniform(-300, -80)), co, inside=(co,))
        for reg in cv.tube(path, r - 7):
            cv.paint(reg, H["air"], co, inside=(co,))
        # stomach with air-fluid level, duodenal C-loop
        st = self.organ("stomach", (-50, 38, 72), (46, 34, 50), -0.5)
        sid = self.id("stomach")
        cv.paint(self.ell(st), H["wall"], sid)
        cv.paint(self.ell(st, shrink_mm=4), H["fluid"] + 5, sid, inside=(sid,))
        sl_mask = self.ell(st, shrink_mm=4)
        if sl_mask is not None:
            sl, m = sl_mask
            _, y, _ = cv.grid(sl)
            cv.paint((sl, m & (y > st.c[1] + 0.3 * st.r[1])), H["air"], sid, inside=(sid,))
        duo = [
            self.jit(p, 4) for p in ((30, 32, 38), (52, 8, 15), (48, 2, -25), (12, 12, -38), (-25, 18, -28))
        ]
        did = self.id("duodenum")
        for reg in cv.tube(duo, 10):
            cv.paint(reg, H["wall"], did)
        for reg in cv.tube(duo, 6.5):
            cv.paint(reg, H["fluid"] + 8, did, inside=(did,))

    def solid_organs(self) -> None:
        cv, H = self.cv, self.HU
        zr, _ = self.dome
        # liver: right lobe under the right dome + left lobe across the midline
        fatty = "fatty_liver" in self.pos
        liver_hu = H["liver"]
        if fatty:  # severe steatosis: an unenhanced liver of about -5 to 20 HU, well below the spleen
            drop = self.frng.uniform(40, 65)
            liver_hu -= drop
            self.findings["fatty_liver"] = f"liver attenuation -{drop:.0f} HU"
        self.liver_hu = liver_hu
        lv = self.id("liver")
        right = self.organ("liver", (70, 2, zr - 70), (88, 82, 78), 0.15)
        left = self.organ("liver_left", (-12, 36, zr - 50), (62, 42, 38), 0.3)
        for o in (right, left):
            reg = self.ell(o)
            if reg is not None:
                sl, m = reg
                _, _, z = cv.grid(sl)
                cv.paint((sl, m & (z < zr - 3)), liver_hu, lv)
        gb_grow = 1.0
        chole = "cholecystitis" in self.pos
        if chole:
            gb_grow = self.frng.uniform(1.1, 1.3)
        gb = self.organ("gallbladder", (48, 42, right.c[2] - 70), (17, 17, 36), 0.6, scale=gb_grow)
        gid = self.id("gallbladder")
        wall = self.frng.uniform(3.5, 6.0) if chole else 1.2
        if chole:
            cv.paint(self.ell(gb, grow=1.0, shrink_mm=-3.0), H["fluid"], None, inside=(0, lv))
            self.findings["cholecystitis"] = f"gallbladder wall {wall:.1f} mm, distended x{gb_grow:.2f}"
        cv.paint(self.ell(gb), H["wall"] + (25 if chole else 0), gid)
        cv.paint(self.ell(gb, shrink_mm=wall), H["bile"], gid, inside=(gid,))
        # spleen (left posterior), enlarged when positive
        sp_scale = 1.0
        if "splenomegaly" in self.pos:  # moderate to massive: 16-20 cm long instead of about 10
            sp_scale = self.frng.uniform(1.5, 1.9)
            self.findings["splenomegaly"] = f"spleen x{sp_scale:.2f} linear"
        sp = self.organ("spleen", (-92, -35, 65 - 12 * (sp_scale - 1)), (30, 50, 52), -0.55, scale=sp_scale)
        cv.paint(
            self.ell(sp), H["spleen"], self.id("spleen"), inside=(0, self.id("colon"), self.id("stomach"))
        )
        # pancreas head -> tail, portal / splenic vein behind it
        pan = [self.jit(p, 4) for p in ((28, 12, 2), (-5, 22, 14), (-45, 10, 24), (-75, -12, 30))]
        for reg in cv.tube(pan, 13):
            cv.paint(reg, H["pancreas"], self.id("pancreas"), inside=(0, self.id("small_bowel")))
        pv = self.id("portal_vein_and_splenic_vein")
        for reg in cv.tube(
            [(p[0], p[1] - 10, p[2] + 2) for p in pan[1:]] + [(sp.c[0] + 20, sp.c[1] + 20, sp.c[2] - 5)], 5
        ):
            cv.paint(reg, H["vein"], pv)
        for reg in cv.tube([(pan[1][0], pan[1][1] - 10, pan[1][2]), (40 * self.b["bx"], 12, zr - 80)], 7):
            cv.paint(reg, H["vein"], pv)
        self.kidneys()
        self.adrenals()

    def kidneys(self) -> None:
        cv, H = self.cv, self.HU
        hydro = "hydronephrosis" in self.pos
        if hydro:
            self.hydro_side = self.frng.choice(["left", "right", "both"], p=[0.4, 0.4, 0.2])
            self.findings["hydronephrosis"] = f"dilated renal pelvis ({self.hydro_side})"
        for side, sign, z in (("right", 1, -22), ("left", -1, -6)):
            kid = self.organ(f"kidney_{side}", (sign * 72, -50, z), (27, 30, 52), sign * 0.4)
            kid_id = self.id(f"kidney_{side}")
            cv.paint(self.ell(kid), H["kidney"], kid_id)
            cv.paint(self.ell(kid, grow=0.7), H["medulla"], kid_id, inside=(kid_id,))
            hil = (kid.c[0] - sign * 14, kid.c[1] + 8, kid.c[2])
            cv.paint(cv.ellipsoid(hil, (8, 10, 20)), H["vfat"], kid_id, inside=(kid_id,))
            pelvis_r = np.array([5.0, 6.0, 9.0])
            dilated = hydro and self.hydro_side in (side, "both")
            if dilated:
                f = self.frng.uniform(2.0, 2.8)
                pelvis_r = pelvis_r * f
                for dz in (-0.55, 0.55):
                    cal = (kid.c[0] - sign * 4, kid.c[1], kid.c[2] + dz * kid.r[2])
                    cv.paint(
                        cv.ellipsoid(cal, tuple(cv.min_radius((7, 7, 9), 1.2))),
                        H["urine"],
                        kid_id,
                        inside=(kid_id,),
                    )
            pel = (kid.c[0] - sign * (14 if not dilated else 10), kid.c[1] + 8, kid.c[2] - 4)
            cv.paint(cv.ellipsoid(pel, tuple(cv.min_radius(tuple(pelvis_r), 0.6))), H["urine"], kid_id)
            self.organs[f"pelvis_{side}"] = Organ(pel, tuple(pelvis_r))  # type: ignore[arg-type]

    def adrenals(self) -> None:
        cv, H = self.cv, self.HU
        hyper = "adrenal_hyperplasia" in self.pos
        thick = self.frng.uniform(1.5, 2.1) if hyper else 1.0
        if hyper:
            self.findings["adrenal_hyperplasia"] = f"adrenal limbs x{thick:.1f} thicker"
        for side, sign in (("right", 1), ("left", -1)):
            kid = self.organs[f"kidney_{side}"]
            top = (kid.c[0] - sign * 14, kid.c[1] + 12, kid.c[2] + kid.r[2] + 13)
            aid = self.id(f"adrenal_gland_{side}")
            r = cv.min_radius((3.0 * thick, 14, 15), 0.9)
            self.organs[f"adrenal_gland_{side}"] = Organ(top, tuple(r))  # type: ignore[arg-type]
            for ang in (0.5, -0.5):
                cv.paint(cv.ellipsoid(top, tuple(r), ang * sign), H["adrenal"], aid)

    def vessels(self) -> None:
        cv, H, b = self.cv, self.HU, self.b
        yv = self.y_vb + 30 * b["by"]
        bif = -110 + self.rng.normal(0, 8)
        ao = [(-14, yv, 400), (-14, yv, 0), (-8, yv + 4, bif)]
        self.aorta = ao
        self.aorta_r = self.rng.uniform(9, 12.5)
        cv.paint(cv.capsule(ao[0], ao[1], self.aorta_r), H["artery"], self.id("aorta"))
        cv.paint(cv.capsule(ao[1], ao[2], self.aorta_r * 0.9), H["artery"], self.id("aorta"))
        ivc = [(24, yv + 2, 400), (24, yv + 2, bif - 10)]
        for reg in cv.tube(ivc, self.rng.uniform(10, 13)):
            cv.paint(
                reg,
                H["vein"],
                self.id("inferior_vena_cava"),
                inside=(0, self.id("liver"), self.id("duodenum")),
            )
        for side, sign in (("left", -1), ("right", 1)):
            end = (sign * 62 * b["bx"], yv + 25, -300)
            cv.paint(cv.capsule(ao[2], end, 6.5), H["artery"], self.id(f"iliac_artery_{side}"))
            cv.paint(
                cv.capsule((ivc[1][0], ivc[1][1], ivc[1][2]), (end[0] + sign * 10, end[1] - 8, -300), 8),
                H["vein"],
                self.id(f"iliac_vena_{side}"),
                inside=(0,),
            )

    def bladder(self) -> None:
        o = self.organ("urinary_bladder", (0, 38, -222), (48, 36, 34))
        bid = self.id("urinary_bladder")
        self.cv.paint(self.ell(o), self.HU["wall"], bid, inside=(0, self.id("small_bowel"), self.id("colon")))
        self.cv.paint(self.ell(o, shrink_mm=2.5), self.HU["urine"], bid, inside=(bid,))

    def peritoneal_band(self, depth: float) -> Region | None:
        """The outer ``depth`` mm of the abdominal cavity in front of the spine, diaphragm to pelvis: where free
        fluid collects (paracolic gutters, anterior abdomen)."""
        a, b = self.b["cav_a"], self.b["cav_b"]
        sl = self.cv.box(np.array([-a, -b, -215.0]), np.array([a, b, self.dome[0] - 20]))
        if sl is None:
            return None
        x, y, _ = self.cv.grid(sl)
        r = np.sqrt((x / a) ** 2 + (y / b) ** 2)  # 1 on the cavity wall
        return sl, (r <= 1.0) & (r >= 1.0 - 2 * depth / (a + b)) & (y > -0.35 * b)

    def lymph_nodes(self, n: int, short: tuple[float, float]) -> int:
        cv = self.cv
        painted = 0
        for _ in range(n):
            where = self.frng.integers(3)
            if where == 0:  # left para-aortic
                c = (-40, self.y_vb + 30, self.frng.uniform(-100, 0))
            elif where == 1:  # aorto-caval
                c = (5, self.y_vb + 45, self.frng.uniform(-90, 10))
            else:  # mesentery
                c = (self.frng.uniform(-40, 40), self.frng.uniform(15, 50), self.frng.uniform(-90, -30))
            s = self.frng.uniform(*short) / 2
            r = cv.min_radius((s, s * 1.2, s * 1.5), 1.0)
            painted += cv.paint(
                cv.ellipsoid(c, tuple(r), self.frng.uniform(0, 3)), self.HU["node"], None, free_only=True
            )
        return painted

    # ----------------------------------------------------------------- findings
    def spots(
        self,
        organ: str,
        labels: tuple[int, ...],
        n: int,
        radius: tuple[float, float],
        hu: float | tuple[float, float],
        voxels: float = 1.0,
        label: int | None = None,
        frac: float = 0.65,
    ) -> int:
        """Plant ``n`` round lesions inside an organ (restricted to its labels); returns voxels painted."""
        o = self.organs[organ]
        total = 0
        for _ in range(n):
            p = self.cv.point_in(self.frng, labels, o.c, o.r, frac)
            if p is None:
                continue
            rad = self.frng.uniform(*radius)
            val = hu if isinstance(hu, float | int) else self.frng.uniform(*hu)
            reg = self.cv.ellipsoid(p, tuple(self.cv.min_radius((rad, rad, rad), voxels)))
            total += self.cv.paint(reg, float(val), label, inside=labels)
        return total

    def findings_pass(self) -> None:
        cv, H, pos, fr = self.cv, self.HU, self.pos, self.frng
        lv = (self.id("liver"),)
        if "liver_cyst" in pos:
            n = int(fr.integers(1, 4))
            v = self.spots("liver", lv, n, (6, 16), (0.0, 12.0), voxels=2.0)
            self.findings["liver_cyst"] = f"{n} water-density cyst(s), {v} voxels"
        if "liver_lesion" in pos:
            n = int(fr.integers(1, 4))
            delta = fr.uniform(22, 40) * (1 if fr.random() < 0.75 else -1)
            v = self.spots("liver", lv, n, (7, 18), self.liver_hu - delta, voxels=2.0)
            self.findings["liver_lesion"] = f"{n} focal lesion(s) {-delta:+.0f} HU vs liver, {v} voxels"
        if "liver_calcifications" in pos:
            n = int(fr.integers(1, 5))
            v = self.spots("liver", lv, n, (1.5, 3.5), (280.0, 800.0), voxels=0.8)
            self.findings["liver_calcifications"] = f"{n} calcified focus/foci, {v} voxels"
        if "gallstone" in pos:
            gid = (self.id("gallbladder"),)
            gb = self.organs["gallbladder"]
            dep = Organ((gb.c[0], gb.c[1] - 0.45 * gb.r[1], gb.c[2] - 0.3 * gb.r[2]), gb.r, gb.angle)
            self.organs["gb_dependent"] = dep
            n = int(fr.integers(1, 4))
            v = self.spots("gb_dependent", gid, n, (3, 7), (220.0, 800.0), voxels=1.0, frac=0.45)
            self.findings["gallstone"] = f"{n} stone(s), {v} voxels"
        kid_ids = (self.id("kidney_left"), self.id("kidney_right"))
        if "kidney_stone" in pos:
            side = fr.choice(["left", "right"])
            n = int(fr.integers(1, 3))
            v = self.spots(f"pelvis_{side}", kid_ids, n, (1.5, 4.0), (350.0, 1100.0), voxels=0.9, frac=1.0)
            if v == 0:
                v = self.spots(f"kidney_{side}", kid_ids, n, (1.5, 4.0), (350.0, 1100.0), voxels=0.9)
            self.findings["kidney_stone"] = f"{n} stone(s) {side}, {v} voxels"
        if "renal_cyst" in pos:
            side = fr.choice(["left", "right"])
            kid = self.organs[f"kidney_{side}"]
            cyst_id = self.id(f"kidney_cyst_{side}")
            n = int(fr.integers(1, 3))
            v = 0
            for _ in range(n):
                p = cv.point_in(fr, (self.id(f"kidney_{side}"),), kid.c, kid.r, 0.85)
                if p is None:
                    continue
                rad = fr.uniform(7, 15)
                reg = cv.ellipsoid(p, tuple(cv.min_radius((rad, rad, rad), 2.0)))
                v += cv.paint(reg, fr.uniform(0, 12), cyst_id, inside=(self.id(f"kidney_{side}"), 0))
            self.findings["renal_cyst"] = f"{n} cyst(s) {side}, {v} voxels (labelled kidney_cyst_{side})"
        if "atherosclerosis" in pos:
            n = int(fr.integers(2, 7))
            v = 0
            a0, _, a2 = self.aorta
            for _ in range(n):
                z = fr.uniform(a2[2], 60)
                ang = fr.uniform(0, 2 * np.pi)
                rr = self.aorta_r * 0.85
                p = (a0[0] + rr * np.cos(ang), a0[1] + rr * np.sin(ang), z)
                reg = cv.ellipsoid(p, tuple(cv.min_radius((2.5, 2.5, 4), 0.9)))
                v += cv.paint(reg, fr.uniform(350, 900), None, inside=(self.id("aorta"),))
            self.findings["atherosclerosis"] = f"{n} calcified aortic plaque(s), {v} voxels"
        if "colorectal_cancer" in pos:
            path = np.asarray(self.colon_path[:-1])  # the last point lies below every field of view
            t = np.linspace(0, len(path) - 1, 60)
            along = np.stack([np.interp(t, np.arange(len(path)), path[:, k]) for k in range(3)], axis=1)
            colon = self.id("colon")
            seen = [q for q in along if (i := cv.index_of(tuple(q))) is not None and cv.lab[i] == colon]
            p = seen[int(fr.integers(len(seen)))] if seen else along[int(fr.integers(len(along)))]
            off = fr.normal(size=3)
            off = off / np.linalg.norm(off) * self.colon_r * 0.5
            c = tuple(p[k] + off[k] for k in range(3))
            r = fr.uniform(12, 18)
            v = cv.paint(
                cv.ellipsoid(c, (r, r, r * 1.6)), H["wall"] + 8, self.id("colon"), inside=(self.id("colon"),)
            )
            self.findings["colorectal_cancer"] = f"colon wall mass r={r:.0f} mm, {v} voxels"
        if "ascites" in pos:  # large: around liver and spleen, down the gutters, into the pelvis
            depth = fr.uniform(30, 60)
            v = sum(
                cv.paint(self.ell(self.organs[o], shrink_mm=-depth), H["fluid"], None, free_only=True)
                for o in ("liver", "spleen")
            )
            v += cv.paint(self.peritoneal_band(depth), H["fluid"], None, free_only=True)
            pelvis = cv.ellipsoid((0, 20, -200), (60 + depth, 45, 25 + depth))
            v += cv.paint(pelvis, H["fluid"], None, free_only=True)
            self.findings["ascites"] = f"free fluid {depth:.0f} mm deep, {v} voxels"
        if "lymphadenopathy" in pos:
            n = int(fr.integers(2, 6))
            v = self.lymph_nodes(n, (12, 22))
            self.findings["lymphadenopathy"] = f"{n} enlarged node(s), {v} voxels"
        else:
            self.lymph_nodes(int(fr.integers(1, 4)), (4, 7))  # normal small nodes as distractors

    def noise(self, rng: np.random.Generator) -> np.ndarray:
        n = rng.standard_normal(self.cv.hu.shape, dtype=np.float32)
        n = ndimage.gaussian_filter(n, sigma=(0.8, 0.8, 0.3))
        n *= np.float32(self.noise_sd / max(float(n.std()), 1e-6))
        return n

    def build(self, noise_rng: np.random.Generator) -> Phantom:
        self.body()
        self.lungs_heart()
        self.bowel()
        self.solid_organs()
        self.vessels()
        self.spine()
        self.ribs()
        if self.geo.body["z_bot"] < -190:
            self.bladder()
        self.findings_pass()
        hu = self.cv.hu
        body = hu > -990
        hu += self.noise(noise_rng) * body
        image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
        return Phantom(
            image, self.cv.lab, self.geo.affine, self.geo.spacing, dict(sorted(self.findings.items()))
        )


def render_case(
    seed: int, index: int, shape: str, labels: Mapping[str, int], class_ids: Mapping[str, int]
) -> Phantom:
    """Render case ``index`` of a benchmark with ``seed``: deterministic in (seed, index, shape, labels)."""
    spec = SHAPES[shape]
    anat, find, noise = case_rngs(seed, index)
    geo = case_geometry(anat, spec)
    return _Builder(geo, anat, find, labels, class_ids).build(noise)
