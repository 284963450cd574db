"""The store's reference side: timing CSVs read on import, and the reference layout exported for the
reference trainers (``<root>/<disease>/embeddings/<case>.h5``)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import StoreError
from ctfm.store import CaseRecord, Store, export_reference, import_folder

RNG = np.random.default_rng(7)
NONROI = load_benchmark().nonroi_diseases


def _h5(path: Path, arr: np.ndarray) -> None:
    with h5py.File(path, "w") as fh:
        fh.create_dataset("y_hat", data=arr)


def _timing(path: Path, rows: list[tuple[str, object]]) -> Path:
    pd.DataFrame(rows, columns=["CaseName", "RunningTime"]).to_csv(path, index=False)
    return path


def _team_outputs(folder: Path, cases: list[str]) -> Path:
    folder.mkdir(parents=True)
    for case in cases:
        _h5(folder / f"{case}.h5", RNG.normal(size=8).astype(np.float32))
    return folder


# -- timing on import -----------------------------------------------------------------------------------------
def test_import_records_seconds_of_the_reference_timing_csv_beside_the_files(tmp_path: Path) -> None:
    src = _team_outputs(tmp_path / "acme_lp" / "embeddings", ["case_a", "case_b", "case_c"])
    rows = [("case_a.nii.gz", 1.62), ("case_b.nii.gz", 0.79), ("case_x.nii.gz", 3.0)]  # case_x: no output
    csv = _timing(src / "acme_lp_feature_extraction_time.csv", rows)
    view = Store(tmp_path / "store").view("acme", "lp", "full")
    report = import_folder(view, src)
    assert report.ok == 3 and report.timing == csv and report.untimed == ["case_c"]
    seconds = {case: rec.seconds for case, rec in view.records().items()}
    assert seconds == {"case_a": 1.62, "case_b": 0.79, "case_c": 0.0}


def test_import_timing_option_and_ambiguous_or_malformed_timing(tmp_path: Path) -> None:
    src = _team_outputs(tmp_path / "out", ["case_a"])
    other = _timing(tmp_path / "elsewhere.csv", [("case_a.nii.gz", 2.5)])
    for image in ("acme_lp", "other_lp"):
        _timing(src / f"{image}_feature_extraction_time.csv", [("case_a.nii.gz", 1.0)])
    store = Store(tmp_path / "store")
    assert import_folder(store.view("acme", "lp", "full"), src).timing.name.startswith("acme_lp")
    with pytest.raises(StoreError, match=r"2 timing CSVs .* pick one with --timing"):
        import_folder(store.view("zeta", "lp", "full"), src)
    zeta = store.view("zeta", "lp", "full")
    import_folder(zeta, src, other)
    assert zeta.record("case_a").seconds == 2.5
    bad = _timing(tmp_path / "bad.csv", [("case_a.nii.gz", "n/a")])
    fresh = store.view("fresh", "lp", "full")
    with pytest.raises(StoreError, match=r"bad.csv, line 2: 'case_a.nii.gz', 'n/a'"):
        import_folder(fresh, src, bad)
    assert fresh.records() == {}  # refused before anything was imported
    (tmp_path / "cols.csv").write_text("case,seconds\ncase_a.nii.gz,1\n")
    with pytest.raises(StoreError, match="no column CaseName, RunningTime"):
        import_folder(fresh, src, tmp_path / "cols.csv")


# -- export -------------------------------------------------------------------------------------------------
def _model(store: Store, task: str = "lp") -> dict[str, dict[str, np.ndarray]]:
    """A model with an ROI view (fatty_liver: 3 ok, 1 failed, 1 timeout) and the whole-scan view (2 ok)."""
    shape = (8,) if task == "lp" else (8, 2, 2, 2)
    stored: dict[str, dict[str, np.ndarray]] = {"fatty_liver": {}, "full": {}}
    for view_name, cases in (("fatty_liver", ["c0", "c1", "c2"]), ("full", ["c0", "c1"])):
        view = store.view("acme", task, view_name)
        for i, case in enumerate(cases):
            arr = RNG.normal(size=shape).astype(np.float32)
            view.write_case(case, arr, CaseRecord(case=case, status="ok", seconds=1.0 + i))
            stored[view_name][case] = arr
    store.view("acme", task, "fatty_liver").record_failure("c3", "failed", "no output", seconds=2.0)
    store.view("acme", task, "fatty_liver").record_failure("c4", "timeout", "too slow", seconds=9.0)
    return stored


def test_export_lays_out_every_disease_as_hard_links_with_the_timing_csv(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    stored = _model(store)
    out = tmp_path / "export"
    report = export_reference(store, "acme", "lp", out)
    by = {d.disease: d for d in report.diseases}
    assert set(by) == {"fatty_liver", *NONROI}
    assert "liver_cyst" in report.absent and report.copied == 0 and report.linked == 3 + 2 * len(NONROI)
    fl = by["fatty_liver"]
    assert fl.exported == 3 and fl.skipped == {"failed": ["c3"], "timeout": ["c4"]}
    assert sorted(p.name for p in (out / "fatty_liver" / "embeddings").iterdir()) == [
        "acme_lp_feature_extraction_time.csv",
        "c0.h5",
        "c1.h5",
        "c2.h5",
    ]
    for disease in ("fatty_liver", *NONROI):
        view = store.view("acme", "lp", load_benchmark().view_of(disease))
        for case, arr in stored[view.view].items():
            dest = out / disease / "embeddings" / f"{case}.h5"
            assert os.path.samefile(dest, view.case_path(case))  # a hard link: no second copy on disk
            with h5py.File(dest, "r") as fh:
                np.testing.assert_array_equal(fh["y_hat"][()], arr)
    timing = pd.read_csv(fl.timing_csv)
    assert timing.to_dict("list") == {
        "CaseName": ["c0.nii.gz", "c1.nii.gz", "c2.nii.gz", "c3.nii.gz", "c4.nii.gz"],
        "RunningTime": [1.0, 2.0, 3.0, 2.0, 9.0],
    }
    assert by["ascites"].timing_csv.name == "acme_lp_feature_extraction_time.csv"


def test_export_rerun_is_idempotent_and_follows_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _model(store)
    out = tmp_path / "export"
    export_reference(store, "acme", "lp", out, ["fatty_liver"])
    again = export_reference(store, "acme", "lp", out, ["fatty_liver"])
    assert again.linked == again.copied == 0 and again.diseases[0].placed == 0
    view = store.view("acme", "lp", "fatty_liver")
    new = np.full(8, 5.0, np.float32)
    view.write_case("c1", new)  # re-extracted: a new file in the store
    view.record_failure("c2", "failed", "broke on rerun")
    view.write_case("c4", np.ones(8, np.float32))  # the timed-out case now succeeded
    third = export_reference(store, "acme", "lp", out, ["fatty_liver"])
    d = third.diseases[0]
    assert (d.exported, d.placed, d.removed) == (3, 2, 1)
    folder = out / "fatty_liver" / "embeddings"
    assert sorted(p.name for p in folder.glob("*.h5")) == ["c0.h5", "c1.h5", "c4.h5"]
    with h5py.File(folder / "c1.h5", "r") as fh:
        np.testing.assert_array_equal(fh["y_hat"][()], new)
    assert os.path.samefile(folder / "c1.h5", view.case_path("c1"))


def test_export_refuses_unrelated_files_and_another_model(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    _model(store)
    out = tmp_path / "export"
    mine = out / "fatty_liver" / "embeddings" / "c1.h5"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"a file the user made")
    with pytest.raises(StoreError, match=r"fatty_liver/embeddings/c1.h5 already exist.*nothing was changed"):
        export_reference(store, "acme", "lp", out)
    assert sorted(p.name for p in out.rglob("*")) == [".ctfm.lock", "c1.h5", "embeddings", "fatty_liver"]
    assert mine.read_bytes() == b"a file the user made"
    mine.unlink()
    export_reference(store, "acme", "lp", out)
    store.view("other", "lp", "full").write_case("c0", np.zeros(8, np.float32))
    with pytest.raises(StoreError, match="holds the lp export of model 'acme'"):
        export_reference(store, "other", "lp", out)
    with pytest.raises(StoreError, match="no lp view 'liver_cyst' for liver_cyst"):
        export_reference(store, "acme", "lp", tmp_path / "x", ["liver_cyst"])
    with pytest.raises(StoreError, match="no eao embeddings of model 'acme'"):
        export_reference(store, "acme", "eao", tmp_path / "x")


def test_export_keeps_a_killed_runs_files_as_its_own(tmp_path: Path) -> None:
    """A run killed after linking some files (its record names them, their content unknown) is rerun."""
    store = Store(tmp_path / "store")
    _model(store)
    out = tmp_path / "export"
    export_reference(store, "acme", "lp", out, ["fatty_liver"])
    record = json.loads((out / ".ctfm-export.json").read_text())
    record["files"] = dict.fromkeys(record["files"], "")
    (out / ".ctfm-export.json").write_text(json.dumps(record))
    rerun = export_reference(store, "acme", "lp", out, ["fatty_liver"])
    assert rerun.diseases[0].placed == 0  # hard links are recognised as the stored files


@pytest.fixture
def other_file_system(tmp_path: Path) -> Iterator[Path]:
    """A folder on another file system than tmp_path: tmpfs /dev/shm, which every Linux runner has."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (tmpfs /dev/shm) to export across")
    folder = shm / f"ctfm-export-test-{uuid.uuid4().hex[:8]}"
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_export_to_another_file_system_copies_and_says_why(tmp_path: Path, other_file_system: Path) -> None:
    store = Store(tmp_path / "store")
    stored = _model(store, "eao")
    report = export_reference(store, "acme", "eao", other_file_system, ["fatty_liver", "ascites"])
    assert report.linked == 0 and report.copied == 5 and report.copied_bytes > 0
    assert "on another file system than the store" in report.copy_reason
    with h5py.File(other_file_system / "ascites" / "embeddings" / "c1.h5", "r") as fh:
        np.testing.assert_array_equal(fh["y_hat"][()], stored["full"]["c1"])
    again = export_reference(store, "acme", "eao", other_file_system, ["fatty_liver", "ascites"])
    assert again.copied == 0 and [d.placed for d in again.diseases] == [0, 0]
    store.view("acme", "eao", "full").write_case("c1", np.zeros((8, 2, 2, 2), np.float32))
    third = export_reference(store, "acme", "eao", other_file_system, ["fatty_liver", "ascites"])
    assert third.copied == 1
    with h5py.File(other_file_system / "ascites" / "embeddings" / "c1.h5", "r") as fh:
        assert not fh["y_hat"][()].any()
