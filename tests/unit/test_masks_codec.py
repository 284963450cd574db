"""The sparse gzip writer and fast reader the masks use: standard gzip, exact bytes, exact volumes."""

from __future__ import annotations

import gzip
import struct
import zlib

import nibabel as nib
import numpy as np
import pytest

from ctfm.core import nifti
from ctfm.core.errors import DataError
from ctfm.core.fsutil import write_bytes_atomic

BLOCK = nifti.SPARSE_BLOCK


@pytest.mark.parametrize(
    ("size", "spans"),
    [
        (0, []),
        (100, [(3, 4)]),
        (3 * BLOCK + 17, []),  # all zeros, with a partial block at the end
        (5 * BLOCK, [(BLOCK + 5, BLOCK + 6)]),  # one byte inside an otherwise zero stream
        (4 * BLOCK + 1000, [(0, 10), (4 * BLOCK + 999, 4 * BLOCK + 1000)]),
        (2 * BLOCK, [(BLOCK - 1, BLOCK + 1)]),  # data straddling a block edge
    ],
)
def test_sparse_gzip_round_trips(size, spans):
    rng = np.random.default_rng(size)
    body = np.zeros(size, np.uint8)
    for lo, hi in spans:
        body[lo:hi] = rng.integers(1, 255, hi - lo)
    for before, after in ((0, 0), (BLOCK * 2 + 3, 7), (5, BLOCK)):
        blob = nifti.gzip_compress_sparse(b"head", body, zeros_before=before, zeros_after=after)
        want = b"head" + bytes(before) + body.tobytes() + bytes(after)
        assert zlib.decompress(blob, 31) == want  # CRC and length are checked by zlib
        assert gzip.decompress(blob) == want


def test_sparse_gzip_is_smaller_than_plain_deflate_on_masks():
    mask = np.zeros((256, 256, 64), np.uint8, order="F")
    mask[100:140, 90:150, 20:30] = 1
    sparse = nifti.gzip_compress_sparse(b"", mask)
    assert len(sparse) < len(gzip.compress(mask.tobytes(order="F"), compresslevel=1))


def test_encode_slab_equals_full_volume(tmp_path):
    full = np.zeros((30, 20, 50), np.uint8, order="F")
    full[5:9, 3:7, 12:20] = 1
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-10, 4, 30)
    whole = nifti.encode_gz(full, affine, descrip="whole")
    slab = nifti.encode_gz(full[:, :, 12:20], affine, descrip="whole", full_shape=full.shape, z0=12)
    assert zlib.decompress(whole, 31) == zlib.decompress(slab, 31)
    write_bytes_atomic(tmp_path / "m.nii.gz", slab)
    img = nib.load(str(tmp_path / "m.nii.gz"))
    assert img.shape == full.shape and img.get_data_dtype() == np.uint8
    assert np.allclose(img.affine, affine) and np.array_equal(np.asanyarray(img.dataobj), full)
    with pytest.raises(ValueError, match="does not fit"):
        nifti.encode_gz(full[:, :, :10], affine, full_shape=full.shape, z0=45)


def test_read_image_fast_matches_nibabel_and_names_bad_files(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0]))
    img.set_data_dtype(np.int16)
    nib.save(img, str(tmp_path / "a.nii.gz"))
    got, got_img = nifti.read_image_fast(tmp_path / "a.nii.gz")
    assert got.dtype == np.int16 and np.array_equal(got, data) and np.allclose(got_img.affine, img.affine)
    scaled = nib.Nifti1Image(data.astype(np.float32) / 7, np.eye(4))
    scaled.set_data_dtype(np.int16)  # nibabel stores it with a slope: the fast path must apply it
    nib.save(scaled, str(tmp_path / "s.nii.gz"))
    want = np.asanyarray(nib.load(str(tmp_path / "s.nii.gz")).dataobj)
    assert np.allclose(nifti.read_image_fast(tmp_path / "s.nii.gz")[0], want)
    big = nib.Nifti1Image(data, img.affine)
    big.header.extensions.append(nib.nifti1.Nifti1Extension(4, b"x" * 70_000))  # header past 64 KiB
    nib.save(big, str(tmp_path / "ext.nii.gz"))
    assert np.array_equal(nifti.read_image_fast(tmp_path / "ext.nii.gz")[0], data)
    blob = (tmp_path / "a.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"cut\.nii\.gz: truncated or corrupt"):
        nifti.read_image_fast(tmp_path / "cut.nii.gz")
    inner = gzip.compress(nib.Nifti1Image(data, img.affine).to_bytes()[:-50])  # whole gzip, NIfTI cut short
    (tmp_path / "short.nii.gz").write_bytes(inner)
    with pytest.raises(DataError, match=r"short\.nii\.gz: truncated or corrupt NIfTI data \(EOFError"):
        nifti.read_image_fast(tmp_path / "short.nii.gz")
    (tmp_path / "text.nii.gz").write_text("not a scan")
    with pytest.raises(DataError, match=r"text\.nii\.gz: not a readable NIfTI file"):
        nifti.read_image_fast(tmp_path / "text.nii.gz")


def test_read_image_fast_reads_multi_member_gzip(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    img = nib.Nifti1Image(data, np.eye(4))
    img.set_data_dtype(np.uint8)
    raw = img.to_bytes()
    (tmp_path / "two.nii.gz").write_bytes(gzip.compress(raw[:400]) + gzip.compress(raw[400:]))
    got, _ = nifti.read_image_fast(tmp_path / "two.nii.gz")
    assert np.array_equal(got, data)


def test_read_image_fast_reads_nifti2(tmp_path):
    """NIfTI-2 headers (540 bytes) as nibabel writes them, plain and scaled: the same voxels and affine."""
    data = (np.arange(24 * 20 * 10).reshape(24, 20, 10) % 300).astype(np.int16)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti2Image(data, affine), tmp_path / "plain.nii.gz")
    scaled = nib.Nifti2Image(data.astype(np.float32), affine)
    scaled.header.set_slope_inter(0.5, 10.0)
    nib.save(scaled, tmp_path / "scaled.nii.gz")
    for name in ("plain", "scaled"):
        got, img = nifti.read_image_fast(tmp_path / f"{name}.nii.gz")
        want = np.asanyarray(nib.load(tmp_path / f"{name}.nii.gz").dataobj)
        assert (
            isinstance(img, nib.Nifti2Image) and np.array_equal(got, want) and np.allclose(img.affine, affine)
        )


def _zero_pixdim_file(path, with_sform: bool) -> None:
    """A volume whose header stores voxel size 0 (as some converters write), with or without an sform."""
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.diag([0.7, 0.7, 2.0, 1.0]))
    raw = bytearray(img.to_bytes())
    raw[80:92] = bytes(12)  # pixdim[1:4] as float32 zeros
    raw[252:256] = struct.pack("<hh", 0, 1 if with_sform else 0)  # qform_code, sform_code
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))


@pytest.mark.parametrize("name", ["scan.nii.gz", "scan.nii"])
def test_zero_voxel_size_is_a_problem_and_nibabel_prints_nothing(tmp_path, caplog, name):
    """nibabel reads pixdim 0 as 1 mm and logs a line to stderr per read; ctfm names the problem instead."""
    _zero_pixdim_file(tmp_path / name, with_sform=False)
    _, img = nifti.read_image_fast(tmp_path / name)
    assert nifti.voxel_problem(img) == (
        "a zero voxel size (pixdim) in a header with no qform or sform: the scan's size is unknown"
    )
    _zero_pixdim_file(tmp_path / name, with_sform=True)  # the sform gives the size: nothing wrong
    _, img = nifti.read_image_fast(tmp_path / name)
    assert nifti.voxel_problem(img) is None and np.allclose(nifti.voxel_spacing(img.affine), (0.7, 0.7, 2.0))
    assert caplog.messages == []  # no record reached a handler (nibabel's own prints to stderr)
    nib.load(tmp_path / name)  # outside ctfm's reads nibabel's own logging is left as it was
    assert caplog.messages == ["pixdim[1,2,3] should be non-zero; setting 0 dims to 1"]
