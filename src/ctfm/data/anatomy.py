"""The anatomy of one synthetic case: body wall, lungs, spine, ribs, bowel, solid organs, vessels, in painting
order (later structures overwrite earlier ones)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ctfm.data.canvas import Canvas, Organ
from ctfm.data.geometry import LEVEL_MM, VERTEBRA_LEVELS, CaseGeometry, Region, Vec


class Anatomy:
    """Paints the anatomy of one case. Order matters: later structures overwrite earlier ones (painter's
    algorithm); :class:`~ctfm.data.phantom.CaseBuilder` adds the findings."""

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
