"""Which numbering a TotalSegmentator label map uses: v2 ``total`` or v1 (``total_v1``), told by its anatomy.

Only ids 1-6 mean the same in both, so a v1 map read as v2 silently gives wrong adrenal, pancreas and cyst
masks; the masks and the dataset check refuse or flag such maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ctfm.core.benchmark import configs_dir, load_benchmark


def _class_profile(label: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per label value 0..255: voxel counts, world superior-inferior centroid (mm), and ml per counted voxel.

    Large maps keep every plane but only every 2nd or 4th row and column within it (organs stay hundreds of
    samples), so this costs a fraction of one pass. Values outside 0..255 are counted as 0 or 255.
    """
    affine = np.asarray(affine, dtype=np.float64)
    si_axis = int(np.argmax(np.abs(affine[2, :3])))  # array axis closest to world S-I
    step = 1 if label.size <= 4_000_000 else 2 if label.size <= 16_000_000 else 4
    steps = [1 if a == si_axis else step for a in range(3)]  # keep every plane, thin the planes out
    sub = label[tuple(slice(None, None, s) for s in steps)]
    keyed = np.clip(np.moveaxis(sub, si_axis, -1), 0, 255).astype(np.int32)
    n_planes = keyed.shape[-1]
    keyed += np.arange(n_planes, dtype=np.int32) * 256  # (plane, value) pairs -> one bincount
    counts = np.bincount(keyed.ravel(order="K"), minlength=n_planes * 256).reshape(n_planes, 256)
    total = counts.sum(axis=0)
    # world z of each plane index: affine row 2 applied at the plane's (sub-sampled) index, other axes at centre
    centre = (np.array(label.shape[:3], dtype=np.float64) - 1) / 2
    planes = np.arange(n_planes)
    z0 = affine[2, :3] @ centre + affine[2, 3] - affine[2, si_axis] * centre[si_axis]
    world_z = z0 + affine[2, si_axis] * planes
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid = (counts * world_z[:, None]).sum(axis=0) / total
    ml = abs(float(np.linalg.det(affine[:3, :3]))) * step**2 / 1000.0
    return total, centroid, ml


def class_map_votes(label_array: np.ndarray, affine: np.ndarray) -> list[tuple[str, int]]:
    """Evidence for v2 (+1) or v1 (-1) numbering, as (reason, vote) pairs; see :func:`detect_class_map_version`."""
    counts, z, ml = _class_profile(np.asarray(label_array), affine)
    if counts[105:].any():
        return [("labels above 104 exist only in v2", 10)]
    vol = counts * ml
    votes: list[tuple[str, int]] = []
    for i in (8, 9):  # v2 adrenal glands (a few ml) vs v1 inferior vena cava / portal vein (tens of ml)
        if counts[i]:
            if vol[i] < 15:
                votes.append((f"id {i} is {vol[i]:.1f} ml, adrenal-sized", 1))
            elif vol[i] > 25:
                votes.append((f"id {i} is {vol[i]:.1f} ml, vessel-sized", -1))
    for i in (11, 12):  # v2 lung lobes (hundreds of ml) vs v1 adrenal glands (a few ml each, as a pair)
        if vol[i] > 40:
            votes.append((f"id {i} is {vol[i]:.1f} ml, lung-sized", 1))
    if counts[11] and counts[12] and max(vol[11], vol[12]) < 12:
        votes.append((f"ids 11, 12 are {vol[11]:.1f} and {vol[12]:.1f} ml, an adrenal pair", -2))
    if counts[5]:  # the liver (id 5 in both) anchors superior-inferior order
        liver = z[5]
        if counts[10]:  # v2 left upper lung lobe above the liver vs v1 pancreas below it
            votes.append(
                ("id 10 lies above the liver", 1) if z[10] > liver else ("id 10 lies below the liver", -1)
            )
        vertebrae = [i for i in range(27, 32) if counts[i]]
        if vertebrae:  # v2 lumbar L5-L1 below the liver vs v1 thoracic T8-T4 above it
            mean = float(np.average(z[vertebrae], weights=counts[vertebrae]))
            votes.append(
                ("ids 27-31 lie below the liver", 1)
                if mean < liver
                else ("ids 27-31 lie above the liver", -1)
            )
    return votes


def detect_class_map_version(label_array: np.ndarray, affine: np.ndarray) -> str:
    """Tell a TotalSegmentator v2 ``total`` map from a v1 (``total_v1``) one by the anatomy it encodes.

    Only ids 1-6 mean the same in both, so the map's own geometry decides. Rule: any label above 104 means
    "v2" outright (v1 has 104 classes). Otherwise each piece of evidence votes +1 (v2) or -1 (v1):

    - ids 8 and 9: under 15 ml each is an adrenal gland (v2), over 25 ml a vein (v1 IVC, portal vein);
    - ids 11 and 12: over 40 ml is a lung lobe (v2, +1 each); both present and under 12 ml are a pair of
      adrenal glands (v1, -2; one small id alone may be the tip of a lobe in a cropped scan);
    - relative to the liver (id 5, the same in both) along the world superior-inferior axis: id 10 above the
      liver's centroid is a lung lobe (v2), below it the pancreas (v1); ids 27-31 below are lumbar vertebrae
      (v2), above thoracic T8-T4 (v1).

    The sum decides: > 0 "v2", < 0 "v1", no evidence or a tie "unknown" (treated as v2 by :func:`build_masks`).
    Volumes and centroids come from one histogram of (plane, label) pairs over thinned rows and columns, so it
    works on maps cropped to the abdomen, on any orientation, and costs a fraction of one pass.
    """
    score = sum(v for _, v in class_map_votes(label_array, affine))
    return "v2" if score > 0 else "v1" if score < 0 else "unknown"


def v1_refusal(path: Path, votes: Sequence[tuple[str, int]]) -> str:
    evidence = "; ".join(reason for reason, v in votes if v < 0)
    v1_tsv = configs_dir() / load_benchmark().raw["class_maps"]["v1"]
    return (
        f"{path}: numbered like TotalSegmentator v1 ({evidence}), not v2 `total`; re-run TotalSegmentator v2 "
        f"(task total), or pass --class-map {v1_tsv} to read it with v1 ids"
    )
