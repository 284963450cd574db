"""One case: read its label map once, write every requested mask, and record in each mask's NIfTI
``descrip`` what it was built from, so a re-run skips what is up to date."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctfm.core import nifti
from ctfm.core.benchmark import ClassMap
from ctfm.core.class_map_version import class_map_votes, v1_refusal
from ctfm.core.errors import DataError
from ctfm.core.fsutil import write_bytes_atomic
from ctfm.core.hashing import digest, sha256_file
from ctfm.masks.compute import Bits, bbox, bits_from_labels, group_slabs, organ_ids
from ctfm.masks.plan import Plan, optional_organs
from ctfm.masks.records import EMPTY, FAILED, MULTILABEL, OK, ORGAN_MISSING, STATUSES, LabelSource, MaskRow

DESCRIP_TAG = "ctfm-mask"
FORMAT_VERSION = 1


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
class MaskJob:
    source: LabelSource
    diseases: tuple[str, ...]
    out_dir: Path
    class_map: ClassMap
    check_version: bool
    margin_mm: float
    force: bool


@dataclass
class CaseResult:
    rows: list[MaskRow]
    written: int = 0
    skipped: int = 0
    read: int = 0


def _read_bits(job: MaskJob, plan: Plan) -> tuple[Bits, np.ndarray, object]:
    """Organ bits of one case from either layout, plus the affine and header to write masks with."""
    src = job.source
    if src.layout == MULTILABEL:
        label, img = nifti.read_image_fast(src.path)
        label = np.asfortranarray(organ_ids(nifti.as_volume(label, src.path), f"{src.path}: label map"))
        if job.check_version:
            votes = class_map_votes(label, img.affine)
            if sum(v for _, v in votes) < 0:
                raise DataError(v1_refusal(src.path, votes))
        return bits_from_labels(label, plan, job.class_map), img.affine, img.header
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
        box = bbox(arr != 0)
        if box is not None:
            bits[box] |= (arr[box] != 0).astype(plan.dtype) * plan.dtype(plan.bit(organ))
    if ref is None:
        raise DataError(f"{src.path}: none of {', '.join(plan.organs)} has a <class>.nii.gz file")
    return Bits.from_full(bits), ref.affine, ref.header


def _qc(organs: Sequence[str], present: set[str], voxels: int) -> tuple[str, str]:
    missing = [o for o in organs if o not in present and o not in optional_organs()]
    if voxels == 0:
        return EMPTY, "empty mask: none of " + ", ".join(organs) + " in the label map"
    if missing:
        return ORGAN_MISSING, "absent: " + ", ".join(missing)
    return OK, ""


def process_case(job: MaskJob) -> CaseResult:
    """Build every requested mask of one case; never raises (problems become failed rows)."""
    src = job.source
    plan = Plan.of(job.diseases)
    result = CaseResult(rows=[])
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
            slabs, present = group_slabs(bits, plan, nifti.voxel_spacing(affine), job.margin_mm)
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
            drop_stale_mask(mask_path(job.out_dir, disease, src.case))
    return result


def mask_path(out_dir: Path, disease: str, case: str) -> Path:
    """Where :func:`build_masks` writes a case's mask for a disease."""
    return Path(out_dir) / disease / f"{case}{nifti.NII_SUFFIX}"


def drop_stale_mask(path: Path) -> None:
    """Remove a mask this module built from inputs that now fail, so no later stage uses it unawares."""
    if _parse_descrip(path) is not None:
        path.unlink(missing_ok=True)


def _up_to_date(path: Path, digest: str) -> tuple[str, int, str, float] | None:
    """The recorded (digest, voxels, status, ml per voxel) when ``path`` was built from these inputs and settings."""
    if not path.is_file():
        return None
    record = _parse_descrip(path)
    return record if record is not None and record[0] == digest else None
