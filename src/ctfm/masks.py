"""TotalSegmentator label maps -> per-disease foreground masks (the crops ROI diseases are scored on).

A disease's mask is the union of its organs (``load_benchmark().roi_organs``), optionally dilated by a margin in
millimetres. Each label map is read once and every requested disease is written from that read; diseases with the
same organs share one encoded file. Outputs record in their NIfTI ``descrip`` what they were built from, so a re-run
skips what is up to date and redoes what a changed margin or class map invalidates.

Example:
    >>> from ctfm.masks import build_masks
    >>> report = build_masks(Path("bench/totalseg"), Path("bench/fg_masks"), workers=2)  # doctest: +SKIP
    >>> report.counts()  # doctest: +SKIP
    {'ok': 418, 'organ_missing': 2}
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ctfm.core import nifti
from ctfm.core.benchmark import ClassMap, configs_dir, load_benchmark
from ctfm.core.errors import ConfigError, DataError
from ctfm.core.fsutil import (
    ABANDONED_S,
    atomic_path,
    exclusive_use,
    is_partial,
    remove_partials,
    write_bytes_atomic,
    write_text_atomic,
)
from ctfm.core.hashing import digest, sha256_file

REPORT_NAME = "masks_report.csv"
REPORT_COLUMNS = ("case", "disease", "voxels", "volume_ml", "status", "message")
OK, EMPTY, ORGAN_MISSING, FAILED = "ok", "empty", "organ_missing", "failed"
STATUSES = (OK, EMPTY, ORGAN_MISSING, FAILED)
MULTILABEL, FOLDER = "multilabel", "folder"
DESCRIP_TAG = "ctfm-mask"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class MaskRow:
    """One QC row of ``masks_report.csv``: a (case, disease) mask and how it came out."""

    case: str
    disease: str
    voxels: int = 0
    volume_ml: float = 0.0
    status: str = OK
    message: str = ""


@dataclass
class MaskReport:
    """What :func:`build_masks` did: QC rows plus counters (a resumed run reads and writes nothing)."""

    rows: list[MaskRow] = field(default_factory=list)
    written: int = 0  # mask files written
    skipped: int = 0  # masks already up to date, not rewritten
    maps_read: int = 0  # label maps (or per-class folders) read
    workers: int = 1  # processes that did the work
    path: Path | None = None  # the report CSV

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.status] = out.get(row.status, 0) + 1
        return out

    @property
    def failed(self) -> list[MaskRow]:
        return [r for r in self.rows if r.status == FAILED]

    @property
    def flagged(self) -> list[MaskRow]:
        """Rows a human should look at: empty masks and absent organs (failures are listed separately)."""
        return [r for r in self.rows if r.status in (EMPTY, ORGAN_MISSING)]

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class LabelSource:
    """Where one case's TotalSegmentator output lives: a multilabel file or a per-class folder."""

    case: str
    path: Path
    layout: str  # MULTILABEL or FOLDER

    def organ_file(self, organ: str) -> Path:
        """``<organ>.nii.gz`` in the case folder, or ``<organ>.nii`` where only that exists (discovery takes both)."""
        packed = self.path / f"{organ}{nifti.NII_SUFFIX}"
        plain = self.path / f"{organ}.nii"
        return plain if not packed.exists() and plain.exists() else packed


# --------------------------------------------------------------------------------------------- class maps
def resolve_class_map(class_map: ClassMap | str | Path | None) -> ClassMap:
    """A :class:`ClassMap` from an object, a version name (``"v2"``) or a TSV file (columns id, name)."""
    if isinstance(class_map, ClassMap):
        return class_map
    if class_map is None:
        return load_benchmark().class_map("v2")
    if str(class_map) in load_benchmark().raw["class_maps"]:
        return load_benchmark().class_map(str(class_map))
    path = Path(class_map)
    if not path.is_file():
        raise ConfigError(f"class map {path}: file not found (give a TSV with columns id, name, or 'v2')")
    return ClassMap.from_tsv(path, version=path.stem)


def optional_organs() -> frozenset[str]:
    """Organs whose absence is normal (kidney cysts are findings, not organs): not flagged as missing."""
    return frozenset(load_benchmark().raw.get("masks", {}).get("optional_organs", []))


def _check_diseases(diseases: Iterable[str] | None) -> list[str]:
    bench = load_benchmark()
    if diseases is None:
        return list(bench.roi_diseases)
    out = list(dict.fromkeys(diseases))
    for disease in out:
        bench.roi_organs(disease)  # raises ConfigError naming the ROI diseases
    return out


@dataclass(frozen=True)
class _Plan:
    """Organs as bits and diseases grouped by identical organ sets (one computation and one encoding each)."""

    organs: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]  # organ names of each group
    members: tuple[tuple[str, ...], ...]  # diseases of each group

    @classmethod
    def of(cls, diseases: Sequence[str]) -> _Plan:
        bench = load_benchmark()
        organs: dict[str, None] = {}
        groups: dict[tuple[str, ...], list[str]] = {}
        for disease in diseases:
            key = tuple(sorted(bench.roi_organs(disease)))
            organs.update(dict.fromkeys(key))
            groups.setdefault(key, []).append(disease)
        return cls(tuple(organs), tuple(groups), tuple(tuple(v) for v in groups.values()))

    def bit(self, organ: str) -> int:
        return 1 << self.organs.index(organ)

    def group_bits(self, g: int) -> int:
        return sum(self.bit(o) for o in self.groups[g])

    @property
    def dtype(self) -> type:
        return np.uint8 if len(self.organs) <= 8 else np.uint16 if len(self.organs) <= 16 else np.uint64


def _check_covers(class_map: ClassMap, diseases: Sequence[str]) -> None:
    """Refuse a class map without an organ the diseases need: every mask would be silently empty."""
    bench = load_benchmark()
    ids, optional = class_map.ids, optional_organs()
    lacking = {
        organ: [d for d in diseases if organ in bench.roi_organs(d)]
        for organ in _Plan.of(diseases).organs
        if organ not in ids and organ not in optional
    }
    if lacking:
        detail = "; ".join(f"{o} (needed by {', '.join(ds)})" for o, ds in lacking.items())
        raise ConfigError(f"class map {class_map.version!r} has no class named {detail}")


# ------------------------------------------------------------------------------------------- computation
def _organ_ids(label: np.ndarray, where: str = "label map") -> np.ndarray:
    """A float label map as integer organ ids (int32; values beyond the id range stay out of it), refused
    unless every value is whole (a NaN or 5.4 is not); any other dtype as it is."""
    if label.dtype.kind != "f":
        return label
    if not np.array_equal(np.rint(label), label):  # NaN != NaN
        raise DataError(f"{where} holds non-integer or NaN values (dtype {label.dtype}): organ ids expected")
    return np.clip(label, -1, 65536).astype(np.int32, order="K")


def _lut_index(label: np.ndarray) -> np.ndarray:
    """Label values as unsigned indices for a lookup table (negative or > 65535 become unused slots)."""
    if label.dtype in (np.uint8, np.uint16):
        return label
    if label.dtype in (np.int8, np.int16):
        return label.view(np.uint8 if label.dtype == np.int8 else np.uint16)
    if not np.issubdtype(label.dtype, np.number):
        raise DataError(f"label map has non-numeric dtype {label.dtype}")
    label = _organ_ids(label)
    out = np.empty(label.shape, np.uint16, order="F" if label.flags.f_contiguous else "C")
    np.copyto(out, np.where((label < 0) | (label > 65535), 65535, label), casting="unsafe")
    return out


def _bbox(nonzero: np.ndarray) -> tuple[slice, ...] | None:
    """Tightest box holding every True voxel, found axis by axis on shrinking crops."""
    box = [slice(None)] * nonzero.ndim
    for axis in range(nonzero.ndim - 1, -1, -1):
        others = tuple(a for a in range(nonzero.ndim) if a != axis)
        hit = np.flatnonzero(nonzero[tuple(box)].any(axis=others))
        if hit.size == 0:
            return None
        box[axis] = slice(int(hit[0]), int(hit[-1]) + 1)
    return tuple(box)


def _grow(box: tuple[slice, ...], pad: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, s.start - p), min(n, s.stop + p)) for s, p, n in zip(box, pad, shape, strict=True)
    )


def _dilate(mask: np.ndarray, spacing: Sequence[float], margin_mm: float) -> np.ndarray:
    """Every voxel whose centre lies within ``margin_mm`` (Euclidean, physical) of the mask: an ellipsoidal
    structuring element in voxel terms, computed by a distance transform on the mask's padded bounding box."""
    from scipy import ndimage

    box = _bbox(mask)
    if box is None or margin_mm <= 0:
        return mask
    pad = [int(np.ceil(margin_mm / s)) + 1 for s in spacing]
    box = _grow(box, pad, mask.shape)
    dist = ndimage.distance_transform_edt(~mask[box].astype(bool), sampling=spacing)
    out = mask.copy()
    out[box] = dist <= margin_mm + 1e-6
    return out


def _dilate_organs(bits: np.ndarray, plan: _Plan, spacing: Sequence[float], margin_mm: float) -> np.ndarray:
    """Each organ's bit dilated once by the margin. A group's dilation is the union of its organs' (a voxel
    within the margin of the union is within it of one organ), so an organ shared by several diseases, such
    as the liver, is dilated once instead of once per disease group."""
    out = np.zeros_like(bits)
    for organ in plan.organs:
        bit = bits.dtype.type(plan.bit(organ))
        grown = _dilate((bits & bit) != 0, spacing, margin_mm)
        np.bitwise_or(out, bit, out=out, where=grown)
    return out


@dataclass(frozen=True)
class _Bits:
    """Organ bits of a volume of ``shape``: ``crop`` inside ``box``, zero elsewhere (``box`` None: all zero)."""

    shape: tuple[int, int, int]
    box: tuple[slice, ...] | None = None
    crop: np.ndarray | None = None

    @classmethod
    def from_full(cls, bits: np.ndarray) -> _Bits:
        box = _bbox(bits != 0)
        return cls(bits.shape, box, None if box is None else bits[box])


@dataclass(frozen=True)
class Slab:
    """A mask kept as the slab of planes that hold it: ``full[:, :, z0 : z0 + data.shape[2]] = data``."""

    shape: tuple[int, int, int]
    z0: int
    data: np.ndarray  # uint8 0/1, Fortran order (contiguous along the last axis, like NIfTI on disk)
    voxels: int

    def full(self) -> np.ndarray:
        out = np.zeros(self.shape, np.uint8, order="F")
        out[:, :, self.z0 : self.z0 + self.data.shape[2]] = self.data
        return out


def _group_slabs(
    bits: _Bits, plan: _Plan, spacing: Sequence[float], margin_mm: float
) -> tuple[list[Slab], set[str]]:
    """Each group's mask as a slab (dilated by the margin), and the organs present.

    Three OR-reductions of the organ bits (one per axis) give every organ's extent, so each group is then
    computed only inside its own bounding box.
    """
    nx, ny, _ = bits.shape
    empty = Slab(bits.shape, 0, np.zeros((nx, ny, 0), np.uint8, order="F"), 0)
    if bits.box is None or bits.crop is None:
        return [empty] * len(plan.groups), set()
    box, crop = bits.box, bits.crop
    if margin_mm > 0:  # room for the dilation: pad the crop with zeros
        grown = _grow(box, [int(np.ceil(margin_mm / s)) + 1 for s in spacing], bits.shape)
        padded = np.zeros(tuple(g.stop - g.start for g in grown), crop.dtype, order="F")
        padded[tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(box, grown, strict=True))] = (
            crop
        )
        box, crop = grown, _dilate_organs(padded, plan, spacing, margin_mm)
    profiles = [np.bitwise_or.reduce(crop, axis=tuple(b for b in range(3) if b != a)) for a in range(3)]
    present_bits = int(np.bitwise_or.reduce(profiles[2]))
    present = {o for o in plan.organs if present_bits & plan.bit(o)}
    slabs = []
    for g in range(len(plan.groups)):
        group_bits = plan.group_bits(g)
        hits = [np.flatnonzero(p & group_bits) for p in profiles]
        if not all(h.size for h in hits):
            slabs.append(empty)
            continue
        gbox = tuple(slice(int(h[0]), int(h[-1]) + 1) for h in hits)
        mask = (crop[gbox] & group_bits) != 0
        at = [slice(b.start + gb.start, b.start + gb.stop) for b, gb in zip(box, gbox, strict=True)]
        slab = np.zeros((nx, ny, mask.shape[2]), np.uint8, order="F")
        slab[at[0], at[1], :] = mask
        slabs.append(Slab(bits.shape, at[2].start, slab, int(np.count_nonzero(mask))))
    return slabs, present


def _bits_from_labels(label: np.ndarray, plan: _Plan, class_map: ClassMap) -> _Bits:
    """One pass over the label map: a lookup table maps each label value to the bits of its organs.

    The table is applied only inside the bounding box of labelled voxels, and the result is cropped again to
    the organs asked for, so later steps touch a small part of the volume.
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise DataError(f"label map must be 3-D, got shape {label.shape}")
    idx = _lut_index(label)
    size = 256 if idx.dtype == np.uint8 else 65536
    lut = np.zeros(size, plan.dtype)
    ids = class_map.ids
    for organ in plan.organs:
        if organ in ids and ids[organ] < size:
            lut[ids[organ]] |= plan.bit(organ)
    shape = tuple(int(n) for n in label.shape)
    box = _bbox(idx != 0)
    if box is None:
        return _Bits(shape)
    crop = lut[idx[box]]
    inner = _bbox(crop != 0)
    if inner is None:
        return _Bits(shape)
    box = tuple(slice(b.start + i.start, b.start + i.stop) for b, i in zip(box, inner, strict=True))
    return _Bits(shape, box, np.asfortranarray(crop[inner]))


def disease_masks(
    label_array: np.ndarray,
    affine: np.ndarray,
    diseases: Iterable[str] | None,
    class_map: ClassMap | str | Path | None,
    margin_mm: float = 0.0,
) -> dict[str, np.ndarray]:
    """Foreground masks (uint8 0/1, the label map's shape) of ``diseases`` from one TotalSegmentator label map.

    The union of each disease's organs, in one lookup-table pass over the map, dilated by ``margin_mm`` in
    physical units (anisotropic spacing from ``affine``). ``class_map`` None means TotalSegmentator v2 ``total``.
    The map's numbering is trusted here; :func:`build_masks` refuses v1-numbered maps first.

    >>> lab = np.zeros((4, 4, 4), np.int16); lab[1, 1, 1] = 5  # liver
    >>> int(disease_masks(lab, np.eye(4), ["fatty_liver"], None)["fatty_liver"].sum())
    1
    """
    names = _check_diseases(diseases)
    if margin_mm < 0:
        raise ConfigError(f"margin must be >= 0 mm, got {margin_mm}")
    plan = _Plan.of(names)
    bits = _bits_from_labels(label_array, plan, resolve_class_map(class_map))
    slabs, _ = _group_slabs(bits, plan, nifti.voxel_spacing(affine), margin_mm)
    return {d: slabs[g].full() for g, members in enumerate(plan.members) for d in members}


# ---------------------------------------------------------------------------------- v1 / v2 detection
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


# ------------------------------------------------------------------------------------------ discovery
def find_label_maps(totalseg_dir: Path) -> dict[str, LabelSource]:
    """Cases in a TotalSegmentator output folder: ``<case>.nii.gz`` multilabel files or ``<case>/`` folders
    of ``<class>.nii.gz`` files (a case having both uses the multilabel file)."""
    totalseg_dir = Path(totalseg_dir)
    if not totalseg_dir.is_dir():
        raise DataError(f"{totalseg_dir}: TotalSegmentator folder not found")
    entries = sorted(p for p in totalseg_dir.iterdir() if not p.name.startswith("."))
    multilabel = [p for p in entries if p.is_file() and p.name.endswith((".nii.gz", ".nii"))]
    nifti.refuse_duplicates(totalseg_dir, multilabel)
    found: dict[str, LabelSource] = {}
    for entry in entries:
        if entry.is_dir() and any(p.name.endswith((".nii.gz", ".nii")) for p in entry.iterdir()):
            found.setdefault(entry.name, LabelSource(entry.name, entry, FOLDER))
        elif entry.is_file() and entry.name.endswith((".nii.gz", ".nii")) and not is_partial(entry):
            found[nifti.case_id(entry)] = LabelSource(nifti.case_id(entry), entry, MULTILABEL)
    return found


def cases_from_labels(labels_dir: Path, diseases: Iterable[str] | None = None) -> dict[str, list[str]]:
    """case -> diseases whose ``labels/<disease>.csv`` lists it. Without ``diseases``: every ROI disease that
    has a CSV; a disease asked for by name must have one."""
    from ctfm.core.labels import labels_path, read_labels

    asked = diseases is not None
    names = _check_diseases(diseases)
    out: dict[str, list[str]] = {}
    used = 0
    for disease in names:
        path = labels_path(Path(labels_dir), disease)
        if not path.is_file():
            if asked:
                raise DataError(f"{path}: label file not found (needed for --disease {disease})")
            continue
        used += 1
        for case in read_labels(path, disease)["case"]:
            out.setdefault(case, []).append(disease)
    if not used:
        raise DataError(f"{labels_dir}: no <disease>.csv for any ROI disease ({', '.join(names)})")
    return out


# ------------------------------------------------------------------------------------------- one case
def _digest(organs: Sequence[str], class_map: ClassMap | None, margin_mm: float, inputs: list) -> str:
    """What a mask was built from: settings and the input files' hashes, so any change rebuilds it."""
    ids = {o: (class_map.ids.get(o) if class_map else o) for o in sorted(organs)}
    settings = {"v": FORMAT_VERSION, "ids": ids, "margin": round(float(margin_mm), 6), "inputs": inputs}
    return digest(settings, length=12)


def _descrip(digest: str, voxels: int, status: str) -> str:
    return f"{DESCRIP_TAG} {digest} {voxels} {status}"


def _parse_descrip(path: Path) -> tuple[str, int, str, float] | None:
    """(digest, voxels, status, ml per voxel) recorded in a mask written by this module, else None."""
    try:
        img = nifti.load(path)
        parts = img.header["descrip"].item().decode("ascii", "replace").split()
        if len(parts) == 4 and parts[0] == DESCRIP_TAG and parts[3] in STATUSES:
            ml = abs(float(np.linalg.det(img.affine[:3, :3]))) / 1000.0
            return parts[1], int(parts[2]), parts[3], ml
    except (DataError, ValueError, KeyError):
        pass
    return None


def _input_hashes(src: LabelSource, organs: Iterable[str]) -> list[tuple[str, str]]:
    """(name, sha256) of each input file. Content, not stamps: a label map replaced by an older file is
    noticed, while a copied or touched dataset rebuilds nothing, and the same inputs give byte-identical
    masks wherever they are built (label maps are small compressed: hashing costs milliseconds)."""
    files = (
        [src.path] if src.layout == MULTILABEL else [f for f in map(src.organ_file, organs) if f.is_file()]
    )
    return [(f.name, sha256_file(f)) for f in files]


@dataclass(frozen=True)
class _Job:
    source: LabelSource
    diseases: tuple[str, ...]
    out_dir: Path
    class_map: ClassMap
    check_version: bool
    margin_mm: float
    force: bool


@dataclass
class _Result:
    rows: list[MaskRow]
    written: int = 0
    skipped: int = 0
    read: int = 0


def _read_bits(job: _Job, plan: _Plan) -> tuple[_Bits, np.ndarray, object]:
    """Organ bits of one case from either layout, plus the affine and header to write masks with."""
    src = job.source
    if src.layout == MULTILABEL:
        label, img = nifti.read_image_fast(src.path)
        label = np.asfortranarray(_organ_ids(nifti.as_volume(label, src.path), f"{src.path}: label map"))
        if job.check_version:
            votes = class_map_votes(label, img.affine)
            if sum(v for _, v in votes) < 0:
                raise DataError(v1_refusal(src.path, votes))
        return _bits_from_labels(label, plan, job.class_map), img.affine, img.header
    bits = None
    ref = None
    for organ in plan.organs:
        path = src.organ_file(organ)
        if not path.is_file():
            continue
        arr, img = nifti.read_image_fast(path)
        arr = nifti.as_volume(arr, path)
        if ref is None:
            ref = img
            bits = np.zeros(arr.shape, plan.dtype, order="F")
        elif arr.shape != bits.shape or not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise DataError(f"{path}: grid differs from {src.path}'s other class files")
        box = _bbox(arr != 0)
        if box is not None:
            bits[box] |= (arr[box] != 0).astype(plan.dtype) * plan.dtype(plan.bit(organ))
    if ref is None:
        raise DataError(f"{src.path}: none of {', '.join(plan.organs)} has a <class>.nii.gz file")
    return _Bits.from_full(bits), ref.affine, ref.header


def _qc(organs: Sequence[str], present: set[str], voxels: int) -> tuple[str, str]:
    missing = [o for o in organs if o not in present and o not in optional_organs()]
    if voxels == 0:
        return EMPTY, "empty mask: none of " + ", ".join(organs) + " in the label map"
    if missing:
        return ORGAN_MISSING, "absent: " + ", ".join(missing)
    return OK, ""


def process_case(job: _Job) -> _Result:
    """Build every requested mask of one case; never raises (problems become failed rows)."""
    src = job.source
    plan = _Plan.of(job.diseases)
    result = _Result(rows=[])
    cmap = job.class_map if src.layout == MULTILABEL else None
    try:
        todo: list[int] = []
        hashes = _input_hashes(src, plan.organs)
        for g, organs in enumerate(plan.groups):
            digest = _digest(organs, cmap, job.margin_mm, hashes)
            paths = [mask_path(job.out_dir, d, src.case) for d in plan.members[g]]
            done = [] if job.force else [_up_to_date(p, digest) for p in paths]
            if job.force or not all(done):
                todo.append(g)
                continue
            for disease, (_, voxels, status, ml) in zip(plan.members[g], done, strict=True):
                message = "up to date" + ("" if status == OK else f" ({status} when built)")
                result.rows.append(MaskRow(src.case, disease, voxels, round(voxels * ml, 3), status, message))
                result.skipped += 1
        if todo:
            bits, affine, header = _read_bits(job, plan)
            result.read = 1
            slabs, present = _group_slabs(bits, plan, nifti.voxel_spacing(affine), job.margin_mm)
            ml = abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
            for g in todo:
                voxels = slabs[g].voxels
                status, message = _qc(plan.groups[g], present, voxels)
                digest = _digest(plan.groups[g], cmap, job.margin_mm, hashes)
                payload = nifti.encode_gz(
                    slabs[g].data,
                    affine,
                    header,
                    _descrip(digest, voxels, status),
                    full_shape=bits.shape,
                    z0=slabs[g].z0,
                )
                for disease in plan.members[g]:
                    write_bytes_atomic(mask_path(job.out_dir, disease, src.case), payload)
                    result.rows.append(
                        MaskRow(src.case, disease, voxels, round(voxels * ml, 3), status, message)
                    )
                    result.written += 1
    except Exception as exc:  # one bad case must not stop the batch
        message = str(exc) if isinstance(exc, DataError) else f"{src.path}: {type(exc).__name__}: {exc}"
        done_diseases = {r.disease for r in result.rows}
        failed = [d for d in job.diseases if d not in done_diseases]
        result.rows += [MaskRow(src.case, d, 0, 0.0, FAILED, message) for d in failed]
        for disease in failed:
            _drop_stale_mask(mask_path(job.out_dir, disease, src.case))
    return result


def mask_path(out_dir: Path, disease: str, case: str) -> Path:
    """Where :func:`build_masks` writes a case's mask for a disease."""
    return Path(out_dir) / disease / f"{case}{nifti.NII_SUFFIX}"


def _drop_stale_mask(path: Path) -> None:
    """Remove a mask this module built from inputs that now fail, so no later stage uses it unawares."""
    if _parse_descrip(path) is not None:
        path.unlink(missing_ok=True)


def _up_to_date(path: Path, digest: str) -> tuple[str, int, str, float] | None:
    """The recorded (digest, voxels, status, ml per voxel) when ``path`` was built from these inputs and settings."""
    if not path.is_file():
        return None
    record = _parse_descrip(path)
    return record if record is not None and record[0] == digest else None


# -------------------------------------------------------------------------------------------- the batch
def build_masks(
    totalseg_dir: Path,
    out_dir: Path,
    diseases: Iterable[str] | None = None,
    cases: Iterable[str] | Mapping[str, Iterable[str]] | None = None,
    workers: int = 1,
    margin_mm: float = 0.0,
    force: bool = False,
    class_map: ClassMap | str | Path | None = None,
    progress: bool = False,
) -> MaskReport:
    """Write ``<out_dir>/<disease>/<case>.nii.gz`` for every case and disease, and ``masks_report.csv``.

    ``cases``: names (each gets every requested disease), a mapping case -> diseases (see
    :func:`cases_from_labels`), or None for every case in ``totalseg_dir``. A case without a label map, an
    unreadable map or a v1-numbered map (refused unless ``class_map`` is given explicitly) gives failed rows and
    the batch goes on. Up-to-date outputs are skipped unless ``force``.
    """
    names = _check_diseases(diseases)
    if not math.isfinite(margin_mm) or margin_mm < 0:
        raise ConfigError(f"--margin-mm must be a finite number >= 0, got {margin_mm}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    cmap = resolve_class_map(class_map)
    _check_covers(cmap, names)
    sources = find_label_maps(totalseg_dir)
    if not sources and cases is None:
        raise DataError(f"{totalseg_dir}: no label maps (<case>.nii.gz files or <case>/ class folders)")
    wanted = _case_diseases(cases, sources, names)
    out_dir = Path(out_dir)
    with exclusive_use(out_dir):  # a second masks run into this folder is refused
        remove_partials(out_dir, older_than=ABANDONED_S)  # what a killed run left
        report = MaskReport()
        jobs = []
        for case, case_diseases in wanted.items():
            if case not in sources:
                where = Path(totalseg_dir) / f"{case}{nifti.NII_SUFFIX}"
                msg = f"{where}: no label map (neither {where.name} nor folder {case}/)"
                report.rows += [MaskRow(case, d, 0, 0.0, FAILED, msg) for d in case_diseases]
                for disease in case_diseases:
                    _drop_stale_mask(mask_path(out_dir, disease, case))
                continue
            jobs.append(
                _Job(sources[case], tuple(case_diseases), out_dir, cmap, class_map is None, margin_mm, force)
            )
        report.workers = min(workers, max(1, len(jobs)))
        for result in _run_jobs(jobs, workers, progress):
            report.rows += result.rows
            report.written += result.written
            report.skipped += result.skipped
            report.maps_read += result.read
        order = {d: i for i, d in enumerate(names)}
        report.rows.sort(key=lambda r: (r.case, order.get(r.disease, len(order))))
        report.path = write_report(report.rows, out_dir / REPORT_NAME)
        return report


def _case_diseases(
    cases: Iterable[str] | Mapping[str, Iterable[str]] | None,
    sources: Mapping[str, LabelSource],
    names: list[str],
) -> dict[str, list[str]]:
    if cases is None:
        return {case: list(names) for case in sources}
    if isinstance(cases, Mapping):
        return {
            case: [d for d in names if d in set(ds)] for case, ds in cases.items() if set(ds) & set(names)
        }
    return {nifti.case_id(case): list(names) for case in cases}


def _run_jobs(jobs: list[_Job], workers: int, progress: bool) -> Iterable[_Result]:
    """Cases in a process pool (or in-process for one worker), with a rich progress bar when asked."""
    from ctfm.progress import progress_bar

    bar = progress_bar("masks", progress)
    if workers == 1 or len(jobs) <= 1:
        with bar:
            task = bar.add_task("masks", total=len(jobs))
            for job in jobs:
                yield process_case(job)
                bar.advance(task)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        futures = [pool.submit(process_case, job) for job in jobs]  # workers start before the bar's thread
        with bar:
            task = bar.add_task("masks", total=len(jobs))
            for future in as_completed(futures):
                yield future.result()
                bar.advance(task)


def write_report(rows: Sequence[MaskRow], path: Path) -> Path:
    """Write the QC rows, keeping the earlier report's rows of other (case, disease) pairs: a run on some
    diseases or cases must not erase what is known about the others."""
    import pandas as pd

    table = pd.DataFrame([asdict(r) for r in rows], columns=list(REPORT_COLUMNS))
    try:
        earlier = pd.read_csv(path, dtype={"case": str, "disease": str}, keep_default_na=False)
    except (OSError, ValueError):
        earlier = None  # no report yet, or unreadable: this run's rows alone
    if earlier is not None and set(REPORT_COLUMNS) <= set(earlier.columns):
        fresh = set(zip(table["case"], table["disease"], strict=True))
        kept = [(c, d) not in fresh for c, d in zip(earlier["case"], earlier["disease"], strict=True)]
        table = pd.concat([earlier.loc[kept, list(REPORT_COLUMNS)], table], ignore_index=True)
        table = table.sort_values(["disease", "case"], kind="stable", ignore_index=True)
    write_text_atomic(path, table.to_csv(index=False))
    return path


# ---------------------------------------------------------------------------------- TotalSegmentator
def organs_needed(diseases: Iterable[str] | None = None) -> list[str]:
    bench = load_benchmark()
    return list(dict.fromkeys(o for d in _check_diseases(diseases) for o in bench.roi_organs(d)))


def totalsegmentator_missing() -> str | None:
    """None when TotalSegmentator and its v2 ``total`` weights are installed, else one line saying what is not."""
    if importlib.util.find_spec("totalsegmentator") is None:
        return (
            "TotalSegmentator is not installed (pip install 'ctfm[totalseg]', then `totalseg_download_weights -t "
            "total`): no label maps were generated"
        )
    try:
        from totalsegmentator.config import get_weights_dir

        weights = Path(get_weights_dir())
    except Exception as exc:  # a broken install (e.g. a torch mismatch) must not stop the masks
        reason = (str(exc).splitlines() or [""])[0]
        return f"TotalSegmentator is installed but cannot be imported ({type(exc).__name__}: {reason})"
    # roi_subset needs the organ model (Dataset291) and the 3 mm model the robust crop runs first (Dataset297)
    have = {p.name[:10] for p in weights.glob("Dataset29*")} if weights.is_dir() else set()
    lacking = [d for d in ("Dataset291", "Dataset297") if d not in have]
    if lacking:
        return (
            f"TotalSegmentator weights {', '.join(lacking)} are missing in {weights} (run "
            "`totalseg_download_weights -t total` with network access): no label maps were generated"
        )
    return None


def run_totalsegmentator(
    images_dir: Path,
    totalseg_dir: Path,
    diseases: Iterable[str] | None = None,
    cases: Iterable[str] | None = None,
    device: str = "gpu",
) -> list[str]:
    """Segment the images lacking a label map in ``totalseg_dir`` (multilabel, v2 ids), asking only for the
    organs the diseases need with TotalSegmentator's robust crop. Returns the cases segmented; raises
    :class:`DataError` with :func:`totalsegmentator_missing`'s line when it cannot run."""
    missing = totalsegmentator_missing()
    if missing:
        raise DataError(missing)
    from totalsegmentator.python_api import totalsegmentator

    have = find_label_maps(totalseg_dir) if Path(totalseg_dir).is_dir() else {}
    wanted = {nifti.case_id(c) for c in cases} if cases is not None else None
    todo = [
        p
        for p in nifti.list_volumes(images_dir)
        if nifti.case_id(p) not in have and (wanted is None or nifti.case_id(p) in wanted)
    ]
    organs = organs_needed(diseases)
    params = inspect.signature(totalsegmentator).parameters
    subset = {"roi_subset_robust": organs} if "roi_subset_robust" in params else {"roi_subset": organs}
    done = []
    for image in todo:
        dest = Path(totalseg_dir) / f"{nifti.case_id(image)}{nifti.NII_SUFFIX}"
        with atomic_path(dest) as tmp:
            totalsegmentator(image, tmp, ml=True, task="total", device=device, quiet=True, **subset)
        done.append(nifti.case_id(image))
    return done


__all__ = [
    "REPORT_NAME",
    "STATUSES",
    "LabelSource",
    "MaskReport",
    "MaskRow",
    "build_masks",
    "cases_from_labels",
    "class_map_votes",
    "detect_class_map_version",
    "disease_masks",
    "find_label_maps",
    "organs_needed",
    "resolve_class_map",
    "run_totalsegmentator",
    "totalsegmentator_missing",
]
