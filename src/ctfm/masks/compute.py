"""Mask arithmetic on one label map: organ bits in one lookup-table pass, grouped, dilated by a margin."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctfm.core import nifti
from ctfm.core.benchmark import ClassMap
from ctfm.core.errors import ConfigError, DataError
from ctfm.masks.plan import Plan, check_diseases, resolve_class_map


def organ_ids(label: np.ndarray, where: str = "label map") -> np.ndarray:
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
    label = organ_ids(label)
    out = np.empty(label.shape, np.uint16, order="F" if label.flags.f_contiguous else "C")
    np.copyto(out, np.where((label < 0) | (label > 65535), 65535, label), casting="unsafe")
    return out


def bbox(nonzero: np.ndarray) -> tuple[slice, ...] | None:
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

    box = bbox(mask)
    if box is None or margin_mm <= 0:
        return mask
    pad = [int(np.ceil(margin_mm / s)) + 1 for s in spacing]
    box = _grow(box, pad, mask.shape)
    dist = ndimage.distance_transform_edt(~mask[box].astype(bool), sampling=spacing)
    out = mask.copy()
    out[box] = dist <= margin_mm + 1e-6
    return out


def _dilate_organs(bits: np.ndarray, plan: Plan, spacing: Sequence[float], margin_mm: float) -> np.ndarray:
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
class Bits:
    """Organ bits of a volume of ``shape``: ``crop`` inside ``box``, zero elsewhere (``box`` None: all zero)."""

    shape: tuple[int, int, int]
    box: tuple[slice, ...] | None = None
    crop: np.ndarray | None = None

    @classmethod
    def from_full(cls, bits: np.ndarray) -> Bits:
        box = bbox(bits != 0)
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


def group_slabs(
    bits: Bits, plan: Plan, spacing: Sequence[float], margin_mm: float
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


def bits_from_labels(label: np.ndarray, plan: Plan, class_map: ClassMap) -> Bits:
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
    box = bbox(idx != 0)
    if box is None:
        return Bits(shape)
    crop = lut[idx[box]]
    inner = bbox(crop != 0)
    if inner is None:
        return Bits(shape)
    box = tuple(slice(b.start + i.start, b.start + i.stop) for b, i in zip(box, inner, strict=True))
    return Bits(shape, box, np.asfortranarray(crop[inner]))


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
    names = check_diseases(diseases)
    if margin_mm < 0:
        raise ConfigError(f"margin must be >= 0 mm, got {margin_mm}")
    plan = Plan.of(names)
    bits = bits_from_labels(label_array, plan, resolve_class_map(class_map))
    slabs, _ = group_slabs(bits, plan, nifti.voxel_spacing(affine), margin_mm)
    return {d: slabs[g].full() for g, members in enumerate(plan.members) for d in members}
