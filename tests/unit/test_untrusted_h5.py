"""Reading HDF5 files ctfm did not write (ctfm.store.untrusted): staged, layout-checked, bounded in a child
process; every bad file is an InvalidEmbedding with its reason, never an exception of the HDF5 library."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from ctfm.core.errors import InvalidEmbedding, StoreError
from ctfm.store.untrusted import H5Reader, validate_y_hat


@pytest.fixture(scope="module")
def reader():
    with H5Reader(timeout_s=20) as r:
        yield r


def h5(path: Path, data=None, name: str = "y_hat", **kwargs) -> Path:
    if data is None and "shape" not in kwargs:
        data = np.arange(4, dtype=np.float32)
    with h5py.File(path, "w") as fh:
        fh.create_dataset(name, data=data, **kwargs)
    return path


def check(path: Path, tmp_path: Path, reader, task: str = "lp", max_bytes: int = 1 << 30) -> np.ndarray:
    return reader.read_file(path, task, tmp_path / "stage", max_bytes)


def test_valid_output_is_read_and_its_staged_copy_removed(tmp_path, reader):
    arr = check(h5(tmp_path / "c1.h5"), tmp_path, reader)
    np.testing.assert_array_equal(arr, np.arange(4, dtype=np.float32))
    assert not list((tmp_path / "stage").iterdir())


@pytest.mark.parametrize(
    ("data", "task", "reason"),
    [
        (np.array([1.0, np.nan], np.float32), "lp", "NaN"),
        (np.arange(4, dtype=np.int32), "lp", "float"),
        (np.zeros((2, 2), np.float32), "lp", "1-D"),
        (np.zeros((2, 2, 2), np.float32), "eao", "4-D"),
    ],
)
def test_bad_arrays_are_rejected(tmp_path, reader, data, task, reason):
    with pytest.raises(InvalidEmbedding, match=reason):
        check(h5(tmp_path / "c.h5", data), tmp_path, reader, task)


def test_links_special_files_junk_and_size(tmp_path, reader):
    secret = h5(tmp_path / "secret.h5")
    (tmp_path / "out").mkdir()
    os.symlink(secret, tmp_path / "out" / "c.h5")
    with pytest.raises(InvalidEmbedding, match="regular file"):
        check(tmp_path / "out" / "c.h5", tmp_path, reader)
    os.mkfifo(tmp_path / "out" / "fifo.h5")  # opened without blocking, then refused
    with pytest.raises(InvalidEmbedding, match="regular file"):
        check(tmp_path / "out" / "fifo.h5", tmp_path, reader)
    with pytest.raises(InvalidEmbedding, match="no dataset"):
        check(h5(tmp_path / "d.h5", name="features"), tmp_path, reader)
    (tmp_path / "e.h5").write_bytes(b"not hdf5")
    with pytest.raises(InvalidEmbedding, match="not a readable HDF5 file"):
        check(tmp_path / "e.h5", tmp_path, reader)
    with pytest.raises(InvalidEmbedding, match="over the limit"):
        check(h5(tmp_path / "f.h5"), tmp_path, reader, max_bytes=100)


def test_outputs_that_read_other_files_or_declare_huge_arrays_are_rejected(tmp_path, reader):
    """A container could point y_hat at any file the runner can read (another team's embeddings, a host
    secret) through HDF5 virtual datasets, external storage or external links, or declare a huge array in a
    tiny compressed file, or millions of one-value chunks that take minutes to read: each fails its case
    without the data being read."""
    victim = h5(tmp_path / "victim.h5", np.full(4, 7.0, np.float32))
    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    out = tmp_path / "out"
    out.mkdir()
    with h5py.File(out / "virtual.h5", "w") as fh:
        layout = h5py.VirtualLayout(shape=(4,), dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(victim), "y_hat", shape=(4,))
        fh.create_virtual_dataset("y_hat", layout)
    h5(
        out / "external.h5",
        None,
        shape=(4,),
        dtype=np.float32,
        external=[(str(tmp_path / "secret.bin"), 0, 16)],
    )
    with h5py.File(out / "linked.h5", "w") as fh:
        fh["y_hat"] = h5py.ExternalLink(str(victim), "y_hat")
    big = {"shape": (1 << 27, 2, 2, 1), "chunks": (1 << 20, 2, 2, 1), "compression": "gzip"}
    h5(out / "bomb.h5", None, dtype=np.float32, **big)  # 2 GiB declared in a tiny file
    h5(out / "chunks.h5", np.zeros(4096, np.float32), chunks=(1,))  # one-value chunks (the had 2^21)
    (out / "folder.h5").mkdir()
    reasons = {
        "virtual": "other files",
        "external": "other files",
        "linked": "is a link",
        "bomb": "over 1073741824",
        "chunks": "4096 chunks of shape",
        "folder": "not a regular file",
    }
    for case, reason in reasons.items():
        with pytest.raises(InvalidEmbedding, match=reason):
            check(out / f"{case}.h5", tmp_path, reader, task="eao" if case == "bomb" else "lp")
    # chunked within bounds (h5py's automatic chunking of a compressed map) is fine
    arr = np.random.default_rng(0).random((8, 16, 16, 16), dtype=np.float32)
    ok = check(h5(out / "gz.h5", arr, compression="gzip", chunks=True), tmp_path, reader, task="eao")
    np.testing.assert_array_equal(ok, arr)


def test_a_hanging_or_crashing_read_fails_alone_and_the_next_read_works(tmp_path):
    """The HDF5 library may hang or crash on a hostile file: the read is bounded by a deadline, a crash is
    that file's failure, and a fresh reader serves the next file. (A FIFO never opens: a natural hang.)"""
    fifo = tmp_path / "hang.h5"
    os.mkfifo(fifo)
    good = h5(tmp_path / "good.h5")
    with H5Reader(timeout_s=1) as reader:
        with pytest.raises(InvalidEmbedding, match="took over 1 s; reader stopped"):
            reader.read(fifo, "lp")
        np.testing.assert_array_equal(reader.read(good, "lp"), np.arange(4, dtype=np.float32))
    with H5Reader(timeout_s=30) as reader:
        reader.read(good, "lp")  # started
        killer = threading.Timer(0.5, lambda: os.kill(reader._proc.pid, signal.SIGSEGV))
        killer.start()
        with pytest.raises(InvalidEmbedding, match=r"crashed the HDF5 reader \(exit code -11\)"):
            reader.read(fifo, "lp")
        killer.join()
        np.testing.assert_array_equal(reader.read(good, "lp"), np.arange(4, dtype=np.float32))


def test_a_reader_stages_into_its_own_folder_and_removes_it(tmp_path):
    with H5Reader() as reader:
        np.testing.assert_array_equal(
            reader.read_file(h5(tmp_path / "c.h5"), "lp"), np.arange(4, dtype=np.float32)
        )
        staging = Path(reader._staging.name)
        assert staging.is_dir() and not list(staging.iterdir())
    assert not staging.exists()


def test_invalid_embeddings_are_store_errors():
    """Whoever catches the store's errors (the CLI, store import) also catches a bad file's."""
    with pytest.raises(StoreError, match="unknown task 'seg'"):
        validate_y_hat(np.zeros(4, np.float32), "seg")
