"""The embedding store: round trips, crash safety, manifest, packed cache, import and reference files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from ctfm.core.errors import StoreError
from ctfm.store import (
    CaseRecord,
    PackedEAO,
    PackedLP,
    Store,
    import_folder,
    sanitize_name,
    to_bfloat16_bits,
    to_float32,
)
from ctfm.store.untrusted import validate_y_hat

RNG = np.random.default_rng(0)


def _rec(case: str, **kw: object) -> CaseRecord:
    return CaseRecord(case=case, status="ok", extractor="test", extractor_version="1", **kw)


def _fill_lp(view, n: int = 4, dim: int = 8) -> dict[str, np.ndarray]:
    arrays = {f"c{i:03d}": RNG.normal(size=dim).astype(np.float32) for i in range(n)}
    for case, arr in arrays.items():
        view.write_case(case, arr, _rec(case))
    return arrays


def test_round_trip_lp_and_eao(tmp_path: Path) -> None:
    store = Store(tmp_path)
    lp = store.view("My Model/v1", "lp", "fatty_liver")
    arrays = _fill_lp(lp)
    eao = store.view("My Model/v1", "eao", "full")
    grid = RNG.normal(size=(6, 2, 3, 4)).astype(np.float32)
    rec = eao.write_case(
        "c000", grid, _rec("c000", spacing=(1.0, 1.0, 2.5), crop_box_voxel=(0, 0, 0, 4, 4, 4))
    )

    assert lp.dir == tmp_path / "My_Model_v1" / "lp" / "fatty_liver"
    for case, arr in arrays.items():
        np.testing.assert_array_equal(lp.read_case(case), arr)
        with h5py.File(lp.case_path(case), "r") as fh:  # what the reference tools do
            np.testing.assert_array_equal(fh["y_hat"][()], arr)
    np.testing.assert_array_equal(eao.read_case("c000"), grid)
    assert rec.shape == (6, 2, 3, 4) and rec.dtype == "float32" and len(rec.checksum) == 64
    fresh = Store(tmp_path).view("My Model/v1", "eao", "full")  # a new reader sees the same record
    assert fresh.records()["c000"].spacing == (1.0, 1.0, 2.5)
    assert fresh.records()["c000"].crop_box_voxel == (0, 0, 0, 4, 4, 4)
    assert lp.cases() == sorted(arrays)
    assert {v.key for v in store.views()} == {
        ("My_Model_v1", "lp", "fatty_liver"),
        ("My_Model_v1", "eao", "full"),
    }


def test_cases_by_status_and_last_record_wins(tmp_path: Path) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    _fill_lp(view, n=3)
    view.record_failure("c001", "failed", "corrupt image")
    view.record_failure("c009", "timeout", "took too long")
    assert view.cases("ok") == ["c000", "c002"]
    assert view.cases("failed") == ["c001"]
    assert view.cases("timeout") == ["c009"]
    assert view.cases(None) == ["c000", "c001", "c002", "c009"]
    assert not view.case_path("c001").exists()  # a failure removes the stale embedding
    assert view.counts() == {"ok": 2, "failed": 1, "timeout": 1}
    view.write_case("c001", np.ones(8, np.float32), _rec("c001"))
    assert view.cases("ok") == ["c000", "c001", "c002"]


def test_retime_corrects_seconds_without_touching_the_file(tmp_path: Path) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    _fill_lp(view, n=2)
    before, stat = view.record("c000"), view.case_path("c000").stat()
    after = view.retime("c000", 1.234567)
    assert after.seconds == 1.2346 and view.record("c000").seconds == 1.2346
    assert (after.checksum, after.shape, after.file) == (before.checksum, before.shape, before.file)
    assert view.case_path("c000").stat().st_ino == stat.st_ino  # not copied again
    view.record_failure("c001", "failed", "bad")
    with pytest.raises(StoreError, match="c001"):
        view.retime("c001", 1.0)


def test_validate_y_hat_rejects_bad_arrays() -> None:
    validate_y_hat(np.zeros(4, np.float16), "lp")
    validate_y_hat(np.zeros((4, 1, 2, 3), np.float64), "eao")
    bad = [
        (np.zeros(4, np.int32), "lp", "float"),
        (np.array([1.0, np.nan], np.float32), "lp", "NaN"),
        (np.array([1.0, np.inf], np.float32), "lp", "NaN"),
        (np.zeros((2, 2), np.float32), "lp", "1-D"),
        (np.zeros((4, 2, 2), np.float32), "eao", "4-D"),
        (np.zeros(0, np.float32), "lp", "empty"),
    ]
    for arr, task, words in bad:
        with pytest.raises(StoreError, match=words):
            validate_y_hat(arr, task)


def test_write_rejects_inconsistent_dim_and_bad_names(tmp_path: Path) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    _fill_lp(view, n=2, dim=8)
    with pytest.raises(StoreError, match="D=5"):
        view.write_case("c010", np.zeros(5, np.float32))
    view.write_case("c000", np.zeros(8, np.float32))  # rewriting a case with the same D is fine
    for bad in ("../evil", "c011\n"):
        with pytest.raises(StoreError, match="safe file name"):
            view.write_case(bad, np.zeros(8, np.float32))
    with pytest.raises(StoreError, match="whole-scan"):
        Store(tmp_path).view("m", "lp", "ascites")
    with pytest.raises(StoreError, match="unknown task"):
        Store(tmp_path).view("m", "probe", "full")
    assert sanitize_name(" a b/c:d ") == "a_b_c_d"
    with pytest.raises(StoreError):
        sanitize_name("///")


def test_failed_h5_write_leaves_no_partial_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    _fill_lp(view, n=2)

    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.File, "create_dataset", boom)
    with pytest.raises(OSError, match="disk full"):
        view.write_case("c005", np.zeros(8, np.float32))
    monkeypatch.undo()
    assert "c005" not in view.records()
    assert not view.case_path("c005").exists()
    assert sorted(p.name for p in view.embeddings_dir.iterdir()) == ["c000.h5", "c001.h5"]


def test_killed_writer_leaves_no_partial_case(tmp_path: Path) -> None:
    """A process SIGKILLed in the middle of writing the h5 leaves the case absent; the view stays usable."""
    script = textwrap.dedent(
        f"""
        import os, signal
        import h5py, numpy as np
        from ctfm.store import Store
        view = Store({str(tmp_path)!r}).view("m", "lp", "full")
        view.write_case("c000", np.ones(8, np.float32))
        real = h5py.File.create_dataset
        def dying(self, *a, **k):
            real(self, *a, **k)
            self.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        h5py.File.create_dataset = dying
        view.write_case("c001", np.ones(8, np.float32))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    view = Store(tmp_path).view("m", "lp", "full")
    assert view.cases(None) == ["c000"]
    assert not view.case_path("c001").exists()
    view.write_case("c001", np.full(8, 2.0, np.float32))
    np.testing.assert_array_equal(view.read_case("c001"), np.full(8, 2.0, np.float32))
    assert view.packed().X.shape == (2, 8)  # leftover temporaries never get packed


def test_torn_manifest_line_is_ignored_and_fenced(tmp_path: Path) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    _fill_lp(view, n=2)
    with view.manifest_path.open("ab") as fh:  # a writer killed mid-line
        fh.write(b'{"case":"c007","status":"o')
    reader = Store(tmp_path).view("m", "lp", "full")
    assert reader.cases(None) == ["c000", "c001"]
    view.write_case("c002", np.zeros(8, np.float32))
    assert Store(tmp_path).view("m", "lp", "full").cases() == ["c000", "c001", "c002"]
    lines = view.manifest_path.read_bytes().split(b"\n")
    assert lines[-2].startswith(b'{"case":"c002"')  # fenced onto its own line


def test_manifest_checksum_tracks_records(tmp_path: Path) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    _fill_lp(view, n=2)
    first = view.manifest_checksum()
    assert first == Store(tmp_path).view("m", "lp", "full").manifest_checksum()
    view.record_failure("c001", "failed", "bad")
    assert view.manifest_checksum() != first


def test_packed_lp_cached_until_manifest_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    arrays = _fill_lp(view, n=5)
    builds = []
    real = type(view)._build_packed

    def counting(self, *args, **kwargs):
        builds.append(args[0])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(view), "_build_packed", counting)
    packed = view.packed()
    assert isinstance(packed, PackedLP) and isinstance(packed.X, np.memmap)
    assert packed.cases == sorted(arrays)
    np.testing.assert_array_equal(packed.X[packed.index("c003")], arrays["c003"])
    again = Store(tmp_path).view("m", "lp", "full").packed()  # another process: served from disk
    assert len(builds) == 1 and again.checksum == packed.checksum
    view.write_case("c009", np.ones(8, np.float32))
    rebuilt = view.packed()
    assert len(builds) == 2 and rebuilt.X.shape == (6, 8)
    assert len(list(view.packed_dir.glob("lp-float32-*.npy"))) == 1  # the stale array was dropped
    meta = json.loads((view.packed_dir / "lp-float32.json").read_text())
    assert meta["checksum"] == view.manifest_checksum()
    half = view.packed("float16")
    assert half.X.dtype == np.float16 and len(builds) == 3
    np.testing.assert_allclose(half.as_float32()[0], arrays["c000"], rtol=1e-3, atol=1e-3)


def test_a_stored_file_damaged_later_is_left_out_of_the_pack_and_says_why(tmp_path: Path) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    arrays = _fill_lp(view, n=4)
    path = view.case_path("c001")
    path.write_bytes(path.read_bytes()[:100])  # disk damage, a botched copy
    packed = view.packed()
    assert packed.cases == ["c000", "c002", "c003"]
    np.testing.assert_array_equal(packed.X[packed.index("c002")], arrays["c002"])
    rec = view.record("c001")
    assert rec.status == "failed" and "stored file unreadable" in rec.error and "re-extract" in rec.error


def test_a_file_unreadable_for_now_but_intact_fails_the_pack_and_records_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock or I/O error (NFS, Lustre) is not damage: nothing is marked failed, the error is raised."""
    import ctfm.store.view as store_module

    view = Store(tmp_path).view("m", "lp", "full")
    _fill_lp(view, n=3)

    def locked(path):
        raise StoreError(f"{path}: not a readable HDF5 file (OSError: unable to lock file)")

    monkeypatch.setattr(store_module, "read_y_hat", locked)
    with pytest.raises(StoreError, match="unable to lock"):
        view.packed()
    assert view.counts()["failed"] == 0 and len(view.cases("ok")) == 3


def test_packed_eao_offsets_grids_and_bfloat16(tmp_path: Path) -> None:
    view = Store(tmp_path).view("m", "eao", "splenomegaly")
    grids = [(2, 2, 2), (1, 3, 2), (3, 1, 1)]
    arrays = {}
    for i, g in enumerate(grids):
        arrays[f"c{i}"] = RNG.normal(size=(5, *g)).astype(np.float32)
        view.write_case(f"c{i}", arrays[f"c{i}"])
    packed = view.packed()
    assert isinstance(packed, PackedEAO)
    assert packed.tokens.shape == (8 + 6 + 3, 5)
    np.testing.assert_array_equal(packed.offsets, [0, 8, 14, 17])
    np.testing.assert_array_equal(packed.grids, grids)
    for i, case in enumerate(packed.cases):
        tok = packed.case_tokens(i)
        np.testing.assert_array_equal(tok, arrays[case].reshape(5, -1).T)
        np.testing.assert_array_equal(tok.T.reshape(5, *packed.grids[i]), arrays[case])
    bf = view.packed("bfloat16")
    assert bf.tokens.dtype == np.uint16
    np.testing.assert_allclose(bf.case_tokens(1), packed.case_tokens(1), rtol=1e-2, atol=1e-2)


def test_packing_tokens_holds_one_case_in_memory_not_the_cache(tmp_path: Path) -> None:
    """A real token cache is tens of GB: packing reads and writes one case at a time, and a damaged case
    found midway still leaves the others packed."""
    import tracemalloc

    view = Store(tmp_path).view("m", "eao", "full")
    case_mb = 64 * 8 * 8 * 8 * 4 / 2**20  # 0.125 MiB
    arrays = {f"c{i:03d}": RNG.normal(size=(64, 8, 8, 8)).astype(np.float32) for i in range(120)}
    for case, arr in arrays.items():
        view.write_case(case, arr)
    path = view.case_path("c060")
    path.write_bytes(path.read_bytes()[:200])
    tracemalloc.start()
    packed = view.packed()
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    assert peak_mb < 20 * case_mb, f"packing 15 MiB of tokens peaked at {peak_mb:.1f} MiB"
    assert len(packed.cases) == 119 and "c060" not in packed.cases
    assert packed.tokens.shape == (119 * 512, 64)
    np.testing.assert_array_equal(packed.case_tokens(packed.index("c119")), arrays["c119"].reshape(64, -1).T)


def test_bfloat16_round_trip_is_close() -> None:
    x = np.array([1.0, -2.5, 3.14159, 1e-3, 65504.0], np.float32)
    y = to_float32(to_bfloat16_bits(x), "bfloat16")
    np.testing.assert_allclose(y, x, rtol=8e-3)
    assert y[0] == 1.0 and y[1] == -2.5


def _h5(path: Path, **datasets: object) -> Path:
    with h5py.File(path, "w") as fh:
        for name, data in datasets.items():
            fh.create_dataset(name, data=data)
    return path


def test_import_reference_files_validates_each(tmp_path: Path) -> None:
    src = tmp_path / "team_outputs"
    src.mkdir()
    good = {f"case_{i}": RNG.normal(size=16).astype(np.float32) for i in range(3)}
    for case, arr in good.items():
        _h5(src / f"{case}.h5", y_hat=arr)  # plain h5py, as a team container writes them
    _h5(src / "no_yhat.h5", features=np.zeros(16, np.float32))
    _h5(src / "ints.h5", y_hat=np.zeros(16, np.int64))
    _h5(src / "nan.h5", y_hat=np.full(16, np.nan, np.float32))
    _h5(src / "rank.h5", y_hat=np.zeros((4, 4), np.float32))
    _h5(src / "zz_dim.h5", y_hat=np.zeros(12, np.float32))
    (src / "garbage.h5").write_bytes(b"not hdf5 at all")
    view = Store(tmp_path / "store").view("team-x", "lp", "full")
    report = import_folder(view, src)
    assert report.ok == 3
    reasons = dict(report.failed)
    assert set(reasons) == {"no_yhat", "ints", "nan", "rank", "zz_dim", "garbage"}
    assert "no dataset" in reasons["no_yhat"] and "float" in reasons["ints"]
    assert "NaN" in reasons["nan"] and "1-D" in reasons["rank"]
    assert "D=12" in reasons["zz_dim"] and "HDF5" in reasons["garbage"]
    assert view.cases("ok") == sorted(good)
    assert view.cases("failed") == sorted(reasons)
    for case, arr in good.items():
        np.testing.assert_array_equal(view.read_case(case), arr)
    assert view.packed().X.shape == (3, 16)


def test_import_reads_each_file_as_untrusted_and_stores_its_own_layout(tmp_path: Path) -> None:
    """A team's outputs handed over as a folder: a corrupted heap (plain h5py raises RuntimeError on it), a
    tiny file declaring a chunk per value, a symlink to another file and a folder named like an output each
    fail their case with one line; the good files around them are stored, in the store's own contiguous
    layout even when the team's file was chunked and compressed."""
    src = tmp_path / "team_outputs"
    src.mkdir()
    good = {f"case_{i}": RNG.normal(size=4096).astype(np.float32) for i in range(3)}
    for case, arr in good.items():
        _h5(src / f"{case}.h5", y_hat=arr)
    with h5py.File(src / "case_0.h5", "w") as fh:  # good, but chunked and compressed
        fh.create_dataset("y_hat", data=good["case_0"], chunks=(1024,), compression="gzip")
    heap = bytearray((src / "case_1.h5").read_bytes())
    at = heap.find(b"HEAP")
    (src / "heap.h5").write_bytes(bytes(heap[:at] + b"HEAX" + heap[at + 4 :]))
    with pytest.raises(RuntimeError, match="bad local heap signature"), h5py.File(src / "heap.h5", "r") as fh:
        fh.get("y_hat", getlink=True)  # what stopped `store import` before
    with h5py.File(src / "chunks.h5", "w") as fh:
        fh.create_dataset("y_hat", data=np.zeros(4096, np.float32), chunks=(1,))
    os.symlink(src / "case_2.h5", src / "link.h5")
    (src / "folder.h5").mkdir()
    view = Store(tmp_path / "store").view("team-x", "lp", "full")
    report = import_folder(view, src)
    assert report.ok == 3 and view.cases("ok") == sorted(good)
    reasons = dict(report.failed)
    assert set(reasons) == {"heap", "chunks", "link", "folder"}
    assert "not a readable HDF5 file" in reasons["heap"] and "bad local heap signature" in reasons["heap"]
    assert "4096 chunks of shape (1,)" in reasons["chunks"]
    assert "not a regular file" in reasons["link"] and "not a regular file" in reasons["folder"]
    assert all(str(src) in why and "\n" not in why for why in reasons.values())  # one line naming the file
    assert view.cases("failed") == sorted(reasons)
    for case, arr in good.items():
        np.testing.assert_array_equal(view.read_case(case), arr)
        with h5py.File(view.case_path(case), "r") as fh:
            assert fh["y_hat"].chunks is None and fh["y_hat"].compression is None


def test_a_rejected_import_keeps_the_embedding_already_stored(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    stored = {f"case_{i}": RNG.normal(size=8).astype(np.float32) for i in range(3)}
    for case, arr in stored.items():
        _h5(first / f"{case}.h5", y_hat=arr)
    _h5(second / "case_1.h5", y_hat=np.zeros(16, np.float32))  # another D
    (second / "case_2.h5").write_bytes((first / "case_2.h5").read_bytes()[:500])  # truncated
    _h5(second / "case_3.h5", y_hat=np.ones(8, np.float32))
    view = Store(tmp_path / "store").view("team-x", "lp", "full")
    import_folder(view, first)
    report = import_folder(view, second)
    assert report.ok == 1
    assert sorted(case for case, why in report.failed if "kept the embedding" in why) == ["case_1", "case_2"]
    assert view.cases("ok") == ["case_0", "case_1", "case_2", "case_3"]
    for case, arr in stored.items():
        np.testing.assert_array_equal(view.read_case(case), arr)


def test_two_model_names_sharing_a_folder_cannot_overwrite_each_other(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    first = store.view("team a", "lp", "full")
    first.write_case("case_0", np.ones(8, np.float32))
    with pytest.raises(StoreError, match="'team_a' maps to the store folder 'team_a' of model 'team a'"):
        store.view("team_a", "lp", "full").write_case("case_0", np.zeros(8, np.float32))
    np.testing.assert_array_equal(first.read_case("case_0"), np.ones(8, np.float32))
    store.view("team a", "eao", "full").write_case("case_0", np.ones((8, 2, 2, 2), np.float32))  # same owner


def test_timing_csv_reference_format(tmp_path: Path) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    view.write_case("a", np.zeros(4, np.float32), _rec("a", seconds=1.25))
    view.write_case("b", np.zeros(4, np.float32), _rec("b", seconds=2.5))
    view.record_failure("c", "timeout", "x", seconds=30.0)
    assert view.write_timing_csv().name == "m_lp_feature_extraction_time.csv"  # the image of m_lp.tar.gz
    path = view.write_timing_csv("acme_lp", tmp_path / "out")
    assert path == tmp_path / "out" / "acme_lp_feature_extraction_time.csv"
    table = pd.read_csv(path)
    assert list(table.columns) == ["CaseName", "RunningTime"]
    assert table.to_dict("records") == [
        {"CaseName": "a.nii.gz", "RunningTime": 1.25},
        {"CaseName": "b.nii.gz", "RunningTime": 2.5},
        {"CaseName": "c.nii.gz", "RunningTime": 30.0},
    ]


def test_missing_file_is_not_ok(tmp_path: Path) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    _fill_lp(view, n=2)
    os.remove(view.case_path("c000"))
    assert view.cases() == ["c001"] and not view.is_done("c000")
    with pytest.raises(StoreError, match="no embedding"):
        Store(tmp_path).view("m", "lp", "full").read_case("c404")


def test_temporaries_of_a_killed_run_are_removed_but_a_live_runs_are_kept(tmp_path: Path) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    _fill_lp(view, n=2)
    old = view.case_path("c000").with_name(".c005.h5.x1y2.part.h5")  # a SIGKILLed writer's, two hours ago
    live = view.case_path("c000").with_name(".c006.h5.z3w4.part.h5")  # another run writing right now
    packed = view.packed_dir / ".lp-float32-abc.X.npy.k9.part.npy"
    for path in (old, live, packed):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    for path in (old, packed):
        os.utime(path, (two_hours_ago, two_hours_ago))
    view.remove_abandoned()
    assert not old.exists() and not packed.exists() and live.exists()
    assert sorted(view.cases()) == ["c000", "c001"]
