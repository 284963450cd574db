"""Reading and writing NIfTI volumes with nibabel, with errors that name the file."""

from __future__ import annotations

import contextlib
import functools
import gzip
import logging
import re
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ctfm.core.errors import DataError, StoreError
from ctfm.core.fsutil import atomic_path

NII_SUFFIX = ".nii.gz"
_CASE_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# Key of ``img.extra`` holding what nibabel repaired in a header while ctfm read it ("pixdim[1,2,3] should be
# non-zero; setting 0 dims to 1"). nibabel logs each repair to stderr, once per read: unlabelled lines amid the
# command's output, and the repaired header no longer shows what was wrong.
HEADER_FIXES = "ctfm_header_fixes"
_reading = threading.local()


def _keep_header_fix(record: logging.LogRecord) -> bool:
    """Logger filter: during a ctfm read, the repair is kept for the image instead of printed."""
    fixes = getattr(_reading, "fixes", None)
    if fixes is None:
        return True
    fixes.append(record.getMessage())
    return False


nib.imageglobals.logger.addFilter(_keep_header_fix)


@contextlib.contextmanager
def _header_fixes() -> Iterator[list[str]]:
    outer = getattr(_reading, "fixes", None)
    _reading.fixes = fixes = []
    try:
        yield fixes
    finally:
        _reading.fixes = outer


def case_id(path: Path | str) -> str:
    """Case name as the benchmark uses it: the file name without ``.nii.gz`` (or ``.nii``)."""
    name = Path(path).name
    for suffix in (NII_SUFFIX, ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_case(case: str) -> str:
    """Case names become file names (embeddings, masks): refuse anything that could escape their folder."""
    if not _CASE_OK.fullmatch(case) or ".." in case:
        raise StoreError(f"case name {case!r} is not a safe file name (letters, digits, . _ - only)")
    return case


def _volume_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith((NII_SUFFIX, ".nii")))


def list_volumes(folder: Path) -> list[Path]:
    """NIfTI files directly in ``folder``, sorted by name, ignoring hidden temporaries."""
    return [p for p in _volume_files(folder) if not p.name.startswith(".")]


def hidden_volumes(folder: Path) -> list[Path]:
    """The hidden NIfTI files :func:`list_volumes` skips (an interrupted write's temporary, a ``._`` copy)."""
    return [p for p in _volume_files(folder) if p.name.startswith(".")]


def odd_entries(folder: Path) -> dict[str, tuple[Path, str]]:
    """Entries of ``folder`` named like volumes that :func:`list_volumes` cannot read (a folder, a broken
    link): case -> (path, why), so a case that looks present is reported, never dropped without a word."""
    odd = {}
    for p in Path(folder).iterdir():
        if p.name.startswith(".") or not p.name.endswith((NII_SUFFIX, ".nii")) or p.is_file():
            continue
        kind = "a folder" if p.is_dir() else "a broken link" if p.is_symlink() else "not a regular file"
        odd[case_id(p)] = (p, f"is {kind}, not a NIfTI file")
    return odd


def find_volume(folder: Path, case: str) -> Path | None:
    """The volume of ``case`` in ``folder`` (``.nii.gz``, else ``.nii``), or None."""
    for suffix in (NII_SUFFIX, ".nii"):
        path = Path(folder) / f"{case}{suffix}"
        if path.is_file():
            return path
    return None


def as_volume(data: np.ndarray, path: Path) -> np.ndarray:
    """``data`` as a 3-D volume: trailing singleton axes (X, Y, Z, 1), as some writers store, are dropped;
    any other shape is refused naming the file."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    return data


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis (column norms of the affine)."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))  # type: ignore[return-value]


# Voxel sizes (mm) a CT scan can have; outside them the header is wrong and every physical size is meaningless.
VOXEL_MM = (0.01, 100.0)


def voxel_problem(img: nib.Nifti1Image) -> str | None:
    """Why ``img``'s voxel size cannot be trusted (zero in a header without an orientation, which nibabel
    silently reads as 1 mm, or outside :data:`VOXEL_MM`), else None."""
    header = img.header
    codes = (int(header["qform_code"]), int(header["sform_code"]))
    zero = min(header["pixdim"][1:4]) <= 0  # as stored, or as nibabel found it before reading zeros as 1 mm
    zero = zero or any("non-zero" in fix for fix in img.extra.get(HEADER_FIXES, ()))
    if codes == (0, 0) and zero:
        return "a zero voxel size (pixdim) in a header with no qform or sform: the scan's size is unknown"
    spacing = tuple(round(v, 6) for v in voxel_spacing(img.affine))
    low, high = VOXEL_MM
    if min(spacing) < low or max(spacing) > high:
        return f"voxel size {spacing} mm is outside {low:g}..{high:g} mm: a wrong header?"
    return None


def nonfinite_problem(data: np.ndarray) -> str | None:
    """How many voxels are NaN or infinite, or values too large for float32, which every model reads (a
    scaled header can ask for either), else None."""
    if not np.issubdtype(data.dtype, np.floating) or not data.size:
        return None
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        return f"{bad} NaN or infinite voxel(s) of {data.size}"
    peak = max(float(data.max()), -float(data.min()))
    if peak > float(np.finfo(np.float32).max):
        return f"voxel values reach {peak:.3g}, beyond float32: a wrong scl_slope?"
    return None


def duplicate_cases(paths: Iterable[Path]) -> dict[str, list[str]]:
    """Cases with more than one volume (``x.nii`` and ``x.nii.gz``): which one is meant cannot be known."""
    names: dict[str, list[str]] = {}
    for path in paths:
        names.setdefault(case_id(path), []).append(Path(path).name)
    return {case: found for case, found in names.items() if len(found) > 1}


def refuse_duplicates(folder: Path, paths: Iterable[Path]) -> None:
    """One clear error before any work when a case has two volumes in ``folder``."""
    dupes = duplicate_cases(paths)
    if dupes:
        case, found = next(iter(dupes.items()))
        more = f" (and {len(dupes) - 1} more case(s) like it)" if len(dupes) > 1 else ""
        raise DataError(f"{folder}: {' and '.join(found)} are both case {case!r}; keep one{more}")


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a volume: enough to tell whether two volumes are aligned."""

    shape: tuple[int, ...]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        return voxel_spacing(self.affine)

    def matches(self, other: Geometry, atol: float = 1e-3) -> bool:
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol)

    def describe(self) -> str:
        """Everything :meth:`matches` compares, so two grids that differ never read the same."""
        origin = tuple(round(float(v), 3) for v in self.affine[:3, 3])
        axes = "".join(nib.aff2axcodes(self.affine))
        return (
            f"shape {self.shape}, spacing {tuple(round(s, 3) for s in self.spacing)}, origin {origin}, {axes}"
        )


def load(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI header (data stays lazy); a missing or non-NIfTI file raises :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with _header_fixes() as fixes:
            img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for bad headers
        raise DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    img.extra[HEADER_FIXES] = fixes
    return img


def geometry(path: Path) -> Geometry:
    img = load(path)
    return Geometry(
        shape=tuple(int(s) for s in img.shape[:3]), affine=np.asarray(img.affine, dtype=np.float64)
    )


def read_array(path: Path, dtype: np.dtype | type | None = None) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read the full voxel array, in its stored dtype unless ``dtype`` is given (no float64 detour)."""
    img = load(path)
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, OSError, ValueError) as exc:
        raise DataError(f"{path}: truncated or corrupt NIfTI data ({type(exc).__name__}: {exc})") from exc
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return data, img


def write(path: Path, data: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None = None) -> Path:
    """Write a volume atomically. nibabel gzips at level 1 by default, the fast end of the trade-off."""
    img = nib.Nifti1Image(data, affine, header=header)
    img.set_data_dtype(data.dtype)
    if header is None:
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    with atomic_path(Path(path)) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


# Fast whole-file gzip codecs. Masks and label maps are mostly zeros: deflate, not disk, is the cost of reading
# and writing them. `isal` (ISA-L) and `deflate` (libdeflate) are optional accelerators; zlib is the fallback and
# every path produces standard gzip that nibabel, SimpleITK and ITK-SNAP read.
SPARSE_BLOCK = 1 << 17  # 128 KiB: granularity at which all-zero stretches are skipped rather than compressed
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime, OS unknown


@functools.cache
def _zero_block(size: int) -> tuple[bytes, int, tuple[int, ...]]:
    """Self-contained raw-deflate encoding of ``size`` zero bytes (level 9, once per process: deflate's best
    ratio, ~1000:1), and the affine map CRC-32 -> CRC-32 after those bytes.

    crc32(zeros, s) is affine in s over GF(2): f(s) = f(0) ^ XOR of (f(2^i) ^ f(0)) over the bits i set in s.
    """
    zeros = bytes(size)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    encoded = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    base = zlib.crc32(zeros, 0)
    return encoded, base, tuple(zlib.crc32(zeros, 1 << i) ^ base for i in range(32))


def _crc_after_zeros(crc: int, base: int, basis: tuple[int, ...]) -> int:
    out, bit = base, 0
    while crc:
        if crc & 1:
            out ^= basis[bit]
        crc >>= 1
        bit += 1
    return out


class _SparseGzip:
    """A gzip stream written from data and runs of zeros; zero runs cost no deflate work (see below)."""

    def __init__(self, level: int = 1) -> None:
        try:
            from isal import isal_zlib as backend

            level = min(level, 3)
        except ImportError:
            backend = zlib
        self._comp = backend.compressobj(level, backend.DEFLATED, -15)
        self._zero, self._base, self._basis = _zero_block(SPARSE_BLOCK)
        self.parts: list[bytes] = [_GZIP_HEADER]
        self.crc = 0
        self.size = 0

    def data(self, chunk: bytes | np.ndarray) -> None:
        self.parts.append(self._comp.compress(chunk))
        self.crc = zlib.crc32(chunk, self.crc)
        self.size += len(chunk) if isinstance(chunk, bytes) else chunk.nbytes

    def zeros(self, count: int) -> None:
        blocks, rest = divmod(count, SPARSE_BLOCK)
        if blocks:
            self.parts.append(self._comp.flush(zlib.Z_FULL_FLUSH))  # byte-aligned, no reference crosses it
            self.parts.extend([self._zero] * blocks)
            for _ in range(blocks):
                self.crc = _crc_after_zeros(self.crc, self._base, self._basis)
            self.size += blocks * SPARSE_BLOCK
        if rest:
            self.data(bytes(rest))

    def array(self, body: np.ndarray) -> None:
        """Append an array's bytes, splicing in the cached encoding for its all-zero 128 KiB blocks."""
        flat = body.reshape(-1, order="A").view(np.uint8)
        block = SPARSE_BLOCK
        n_full = flat.size // block
        has_data = np.ones(n_full + 1, dtype=bool)  # the last, partial block is always compressed
        if n_full:
            has_data[:n_full] = flat[: n_full * block].reshape(n_full, block).any(axis=1)
        edges = np.flatnonzero(np.diff(has_data.astype(np.int8))) + 1
        for start, end in zip(np.r_[0, edges].tolist(), np.r_[edges, n_full + 1].tolist(), strict=True):
            stop = min(end * block, flat.size)
            if has_data[start]:
                if stop > start * block:
                    self.data(flat[start * block : stop])
            else:
                self.zeros(stop - start * block)

    def finish(self) -> bytes:
        self.parts.append(self._comp.flush(zlib.Z_FINISH))
        self.parts.append(struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF))
        return b"".join(self.parts)


def gzip_compress_sparse(head: bytes, body: np.ndarray, zeros_before: int = 0, zeros_after: int = 0) -> bytes:
    """gzip of ``head``, ``zeros_before`` zero bytes, ``body``'s bytes (contiguous array), ``zeros_after`` zeros.

    Made for mostly-zero data such as masks: all-zero 128 KiB stretches are not compressed again; a cached,
    byte-aligned deflate encoding of a zero block is spliced in after a full flush and the CRC is advanced
    algebraically. The result is one standard gzip member (any inflater reads it), several times faster to make
    than a plain level-1 deflate of the whole volume, and smaller.
    """
    stream = _SparseGzip()
    stream.data(head)
    stream.zeros(zeros_before)
    stream.array(body)
    stream.zeros(zeros_after)
    return stream.finish()


def gzip_decompress(data: bytes, min_size: int = 0) -> bytes:
    """Decompress a whole gzip file: libdeflate when installed, else zlib into one buffer of the size the
    gzip trailer announces (``gzip.decompress`` grows its output and peaks at twice the volume).

    Both decode only the first member of a multi-member file: a result shorter than ``min_size`` (what the
    caller knows the content must hold) or an error falls back to :func:`gzip.decompress`, which reads all.
    """
    try:
        import deflate

        out = deflate.gzip_decompress(data)
    except ImportError:
        try:
            size = struct.unpack("<I", data[-4:])[0] if len(data) >= 4 else 0  # ISIZE: size mod 2**32
            out = zlib.decompress(data, 31, bufsize=max(size, 1))
        except zlib.error:
            out = b""
    except Exception:  # e.g. streams over 4 GiB: let zlib handle them
        out = b""
    return out if out and len(out) >= min_size else gzip.decompress(data)


def _image_class(raw: bytes) -> type[nib.Nifti1Image]:
    """NIfTI-1 or NIfTI-2, by the header size the file starts with (either byte order)."""
    first = raw[:4]
    sizes = {struct.unpack("<i", first)[0], struct.unpack(">i", first)[0]} if len(first) == 4 else set()
    return nib.Nifti2Image if nib.Nifti2Header.sizeof_hdr in sizes else nib.Nifti1Image


def read_image_fast(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Like :func:`read_array` (stored dtype), reading a ``.nii.gz`` in one decompression instead of a stream.

    About 2x (zlib) to 7x (libdeflate) faster than nibabel's streaming reader on large label maps. Unscaled
    data is returned as a read-only view of the decompressed buffer.
    """
    path = Path(path)
    if not path.name.endswith(".gz"):
        return read_array(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with _header_fixes() as fixes:
            data, img = _decode_gz(path.read_bytes())
    except (EOFError, zlib.error) as exc:  # the data stops early or does not inflate
        raise DataError(f"{path}: truncated or corrupt NIfTI data ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # gzip, nibabel header and shape errors all mean: unreadable
        raise DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    img.extra[HEADER_FIXES] = fixes
    return data, img


def _decode_gz(blob: bytes) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Header and voxels of a whole ``.nii.gz`` held in memory (see :func:`read_image_fast`)."""
    raw = gzip_decompress(blob, min_size=352)  # at least a NIfTI-1 header
    klass = _image_class(raw)
    size = klass.header_class.sizeof_hdr
    header_end = max(size + 4, int(klass.header_class(raw[:size]).get_data_offset()))  # + extensions
    head = klass.from_bytes(raw[:header_end])  # no copy of the data
    proxy = head.dataobj  # holds the file's scaling (the image header's copy is reset on load)
    offset = int(proxy.offset)
    needed = offset + int(np.prod(head.shape)) * head.get_data_dtype().itemsize
    if len(raw) < needed:  # a multi-member gzip cut short by libdeflate, or a truncated file
        raw = gzip_decompress(blob, min_size=needed)
    if len(raw) < needed:
        raise EOFError(f"{len(raw)} of {needed} bytes")
    if float(proxy.slope) == 1.0 and float(proxy.inter) == 0.0:
        shape = tuple(int(s) for s in head.shape)
        data = np.ndarray(shape, head.get_data_dtype(), buffer=raw, offset=offset, order="F")
        img = klass(data, head.affine, header=head.header)
    else:  # scaled data: let nibabel apply the scaling
        img = klass.from_bytes(raw)
        data = np.asanyarray(img.dataobj)
    return data, img


def encode_gz(
    data: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
    descrip: str = "",
    full_shape: tuple[int, int, int] | None = None,
    z0: int = 0,
) -> bytes:
    """The bytes of a ``.nii.gz`` holding ``data`` (its own dtype, unscaled), fast-gzipped.

    With ``full_shape``, ``data`` is only the slab ``[:, :, z0 : z0 + data.shape[2]]`` of a volume that is zero
    elsewhere (e.g. a mask around one organ): the zeros are never materialised. ``header`` (e.g. the source
    image's) supplies qform/sform codes and units; write the result with :func:`ctfm.core.fsutil.write_bytes_atomic`.
    Encoding once and writing the bytes to several files saves identical masks without compressing them again.
    """
    shape = tuple(full_shape) if full_shape is not None else data.shape
    if full_shape is not None and (data.shape[:2] != shape[:2] or z0 < 0 or z0 + data.shape[2] > shape[2]):
        raise ValueError(f"slab {data.shape} at z={z0} does not fit volume {shape}")
    img = nib.Nifti1Image(np.empty((1,) * len(shape), data.dtype), affine, header=header)
    hdr = img.header
    hdr.set_data_dtype(data.dtype)
    if header is None:
        hdr.set_qform(affine, code=1)
        hdr.set_sform(affine, code=1)
    else:
        img.update_header()
    hdr.set_data_shape(shape)
    hdr["scl_slope"], hdr["scl_inter"] = 1.0, 0.0
    hdr["descrip"] = descrip.encode("ascii", "replace")[:79]
    hdr.extensions.clear()
    hdr["vox_offset"] = 352
    head = bytes(hdr.binaryblock) + b"\x00\x00\x00\x00"
    plane = int(np.prod(shape[:2])) * data.dtype.itemsize
    after = (shape[2] - z0 - data.shape[2]) * plane if full_shape is not None else 0
    return gzip_compress_sparse(head, np.asfortranarray(data), zeros_before=z0 * plane, zeros_after=after)
