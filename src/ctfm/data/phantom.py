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

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ctfm.data.anatomy import Anatomy
from ctfm.data.canvas import Organ
from ctfm.data.geometry import SHAPES, case_geometry, case_rngs


@dataclass
class Phantom:
    """A rendered case: int16 HU image, uint8 TotalSegmentator v2 map, affine and what was planted."""

    image: np.ndarray
    labelmap: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    findings: dict[str, str] = field(default_factory=dict)


class CaseBuilder(Anatomy):
    """One case: its anatomy, then the planted findings and noise."""

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
    return CaseBuilder(geo, anat, find, labels, class_ids).build(noise)
