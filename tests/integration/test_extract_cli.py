"""``ctfm extract`` and ``ctfm store`` through the real CLI on tiny hand-made cases."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

from ctfm.store import Store
from extract_fixtures import make_case


def _bench(root: Path, n: int = 4) -> Path:
    masks = root / "fg_masks" / "fatty_liver"
    for i in range(n):
        make_case(root, f"case_{i:02d}", organ_hu=40 + 5 * i, mask_dir=masks)
    return root


def test_store_import_and_ls(cli, tmp_path: Path) -> None:
    src = tmp_path / "outputs"
    src.mkdir()
    for i in range(3):
        with h5py.File(src / f"case_{i}.h5", "w") as fh:
            fh.create_dataset("y_hat", data=np.arange(4, dtype=np.float32) + i)
    with h5py.File(src / "broken.h5", "w") as fh:
        fh.create_dataset("y_hat", data=np.array([np.nan] * 4, np.float32))
    store = tmp_path / "store"
    proc = cli("store", "import", src, "--store", store, "--model", "team/a", "--task", "lp", check=False)
    assert proc.returncode == 1, proc.stderr
    assert "imported 3" in proc.stdout and "broken" in proc.stdout and "NaN" in proc.stdout
    view = Store(store).view("team/a", "lp", "full")
    assert view.cases("ok") == ["case_0", "case_1", "case_2"] and view.cases("failed") == ["broken"]
    listing = cli("store", "ls", "--store", store).stdout
    typo = cli("store", "ls", "--store", tmp_path / "stroe", check=False)  # a mistyped store is not "empty"
    assert typo.returncode == 2 and "Invalid value for '--store'" in typo.stderr
    assert typo.stderr.strip().splitlines() == [  # a usage mistake is one line, not click's boxed panel
        f"error: ctfm store ls: Invalid value for '--store': dir '{tmp_path / 'stroe'}' does not exist. "
        "(see 'ctfm store ls --help')"
    ]
    assert "team_a" in listing and "full" in listing
    row = next(line for line in listing.splitlines() if "team_a" in line)
    assert [c for c in row.replace("│", " ").split() if c.isdigit()][:3] == ["3", "1", "0"]
    bad = cli(
        "store",
        "import",
        src,
        "--store",
        store,
        "--model",
        "m",
        "--task",
        "lp",
        "--view",
        "ascites",
        check=False,
    )
    assert bad.returncode == 2 and "whole-scan" in bad.stderr


def test_extract_failures_recorded_others_succeed_and_resume(cli, tmp_path: Path) -> None:
    root = _bench(tmp_path)
    (root / "images" / "case_01.nii.gz").write_bytes(b"\x1f\x8b corrupt")  # corrupt image
    (root / "fg_masks" / "fatty_liver" / "case_02.nii.gz").unlink()  # a case without its mask
    store = tmp_path / "store"
    args = ("extract", "--extractor", "hu-stats", "--images", root / "images", "--store", store)
    roi = ("--masks", root / "fg_masks", "--disease", "fatty_liver", "--workers", "1")
    first = cli(*args, *roi, check=False)
    assert first.returncode == 1, first.stderr
    view = Store(store).view("hu-stats", "lp", "fatty_liver")
    assert view.cases("ok") == ["case_00", "case_03"]
    recs = view.records()
    assert "cannot read" in recs["case_01"].error and "no mask" in recs["case_02"].error
    ok = recs["case_00"]
    assert ok.extractor == "hu-stats" and len(ok.image_sha256) == 64 and len(ok.mask_sha256) == 64
    assert len(ok.crop_box_voxel) == 6 and len(ok.direction) == 9 and ok.spacing == (2.0, 2.0, 4.0)
    assert "failed" in first.stdout and "case_01" in first.stdout

    lines = len(view.manifest_path.read_text().splitlines())
    mtime = view.case_path("case_00").stat().st_mtime_ns
    second = cli(*args, *roi, check=False)  # resume: only the two failed cases are tried again
    assert second.returncode == 1
    assert len(view.manifest_path.read_text().splitlines()) == lines + 2
    assert view.case_path("case_00").stat().st_mtime_ns == mtime
    assert view.records()["case_00"] == ok

    forced = cli(*args, *roi, "--force", "--cases", "case_00,case_03")
    assert forced.returncode == 0
    assert view.records()["case_00"].written_at > ok.written_at
    # a wrong --device is refused even when every selected case is already done
    done = cli(*args, *roi, "--cases", "case_00", "--device", "tpu", check=False)
    assert (done.returncode, done.stderr.strip()) == (
        2,
        "error: --device must be one of auto, cpu, cuda, not 'tpu'",
    )


def test_extract_redoes_cases_whose_inputs_changed(cli, tmp_path: Path) -> None:
    """A stored embedding is reused only while its image, mask and extraction settings are unchanged."""
    root = _bench(tmp_path)
    store = tmp_path / "store"
    args = ("extract", "--extractor", "hu-stats", "--images", root / "images", "--store", store)
    roi = ("--masks", root / "fg_masks", "--disease", "fatty_liver", "--workers", "0")
    cli(*args, *roi)
    view = Store(store).view("hu-stats", "lp", "fatty_liver")
    before = {c: view.read_case(c) for c in view.cases()}
    written = {c: view.record(c).written_at for c in view.cases()}
    images, masks = root / "images", root / "fg_masks" / "fatty_liver"
    shutil.copy2(images / "case_03.nii.gz", images / "case_00.nii.gz")  # replaced by an older file's copy
    shutil.copy2(masks / "case_03.nii.gz", masks / "case_00.nii.gz")
    redone = nib.load(masks / "case_01.nii.gz")
    smaller = np.asarray(redone.dataobj).copy()
    smaller[:, :, :10] = 0
    nib.save(nib.Nifti1Image(smaller, redone.affine), masks / "case_01.nii.gz")  # a mask redone, smaller
    again = cli(*args, *roi, "--seed", "7")  # hu-stats does not use the seed: no reason to redo the others
    assert "extracted again 2 stored case(s)" in again.stdout and "case_00, case_01" in again.stdout
    np.testing.assert_array_equal(view.read_case("case_00"), before["case_03"])
    assert view.record("case_01").written_at > written["case_01"]
    for case in ("case_02", "case_03"):
        assert view.record(case).written_at == written[case]
    lines = len(view.manifest_path.read_text().splitlines())
    cli(*args, *roi)
    assert len(view.manifest_path.read_text().splitlines()) == lines  # now all up to date


def test_extract_reuses_embeddings_of_copied_or_touched_inputs(cli, tmp_path: Path) -> None:
    """New stamps with the same content (a dataset copied elsewhere, masks rebuilt identically) redo
    nothing: the recorded hashes decide, the embeddings and the store checksum stay, and the next run is
    quick again (no more manifest rows)."""
    root = _bench(tmp_path)
    store = tmp_path / "store"
    args = ("extract", "--extractor", "hu-stats", "--store", store, "--workers", "0")
    roi = ("--masks", root / "fg_masks", "--disease", "fatty_liver")
    cli(*args, "--images", root / "images", *roi)
    view = Store(store).view("hu-stats", "lp", "fatty_liver")
    checksum = view.manifest_checksum()
    files = {c: (view.dir / view.record(c).file).stat().st_mtime_ns for c in view.cases()}
    copy = tmp_path / "copy"
    shutil.copytree(root / "images", copy)  # copytree keeps the times: set them apart
    for path in copy.iterdir():
        os.utime(path, (1e9, 1e9))
    os.utime(root / "fg_masks" / "fatty_liver" / "case_01.nii.gz")  # touched: now
    reused = cli(*args, "--images", copy, *roi)
    assert "extracted again" not in reused.stdout
    assert {c: (view.dir / view.record(c).file).stat().st_mtime_ns for c in view.cases()} == files
    assert view.manifest_checksum() == checksum
    lines = len(view.manifest_path.read_text().splitlines())
    cli(*args, "--images", copy, *roi)
    assert len(view.manifest_path.read_text().splitlines()) == lines
    (copy / "case_02.nii.gz").write_bytes((copy / "case_03.nii.gz").read_bytes())  # new content: redone
    redone = cli(*args, "--images", copy, *roi)
    assert "extracted again 1 stored case(s)" in redone.stdout and "case_02" in redone.stdout


def test_extract_cnn3d_eao_whole_scan_batched(cli, tmp_path: Path) -> None:
    root = _bench(tmp_path, n=3)
    store = tmp_path / "store"
    cli(
        "extract", "--extractor", "cnn3d", "--images", root / "images", "--store", store,
        "--task", "eao", "--workers", "2", "--batch-size", "2", "--device", "cpu", "--model", "cnn test",
    )  # fmt: skip
    view = Store(store).view("cnn test", "eao", "full")
    assert view.cases() == ["case_00", "case_01", "case_02"]
    packed = view.packed()
    assert packed.tokens.shape == (3 * 6**3, 128)
    np.testing.assert_array_equal(packed.grids, [[6, 6, 6]] * 3)
    assert view.records()["case_00"].crop_box_voxel[3:] != ()
    missing = cli("extract", "--images", root / "images", "--store", store, check=False)
    assert missing.returncode == 2 and "--extractor" in missing.stderr


def test_extractor_and_team_images_are_alternatives(cli, tmp_path):
    proc = cli("extract", "--extractor", "hu-stats", "--image", "foo:1", "--images", tmp_path, "--store",
               tmp_path / "s", check=False)  # fmt: skip
    assert proc.returncode == 2 and "pass one" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_check_container_with_a_missing_images_folder_names_it(cli, tmp_path):
    """Before any engine call: the folder, not a mask folder inside it, is what is missing."""
    missing = tmp_path / "test_demo"
    proc = cli("check-container", "any:1", "--task", "eao", "--disease", "liver_cyst", "--images", missing,
               check=False)  # fmt: skip
    assert proc.returncode == 2 and f"{missing}: not a folder" in " ".join(proc.stderr.split())


def test_disease_options_take_lists_alike_or_refuse_more_than_one(cli, tmp_path: Path) -> None:
    """No command silently keeps only the last of several --disease values."""
    root = _bench(tmp_path, n=2)
    twice = cli(
        "extract", "--image", "team:1", "--images", root / "images", "--store", tmp_path / "s",
        "--masks", root / "fg_masks", "--disease", "fatty_liver", "--disease", "liver_cyst", check=False,
    )  # fmt: skip
    assert (twice.returncode, twice.stderr.strip()) == (
        2,
        "error: --disease takes one value here, not fatty_liver, liver_cyst: run the command once per value",
    )
    stray = cli("eval", "--runs", tmp_path, "--store", tmp_path, "--labels", tmp_path, "--disease", "ascites",
                "--out", tmp_path / "e", check=False)  # fmt: skip
    assert (stray.returncode, stray.stderr.strip()) == (
        2,
        "error: --disease goes with --predictions; checkpoints name their own",
    )
    bad = cli("masks", "--totalseg", tmp_path, "--out", tmp_path / "m", "--disease", "fatty_liver,gout",
              check=False)  # fmt: skip
    assert bad.returncode == 2 and "'gout' is not an ROI disease" in bad.stderr  # the list was split


def test_extract_fills_several_tasks_and_views_in_one_pass(cli, tmp_path: Path) -> None:
    """``--task lp,eao --disease a,b``: four views from one read of each image, a table per view."""
    root = _bench(tmp_path, n=2)
    masks = root / "fg_masks"
    (masks / "splenomegaly").mkdir()
    for case in ("case_00", "case_01"):
        shutil.copy(masks / "fatty_liver" / f"{case}.nii.gz", masks / "splenomegaly")
    proc = cli(
        "extract", "--extractor", "hu-stats", "--images", root / "images", "--store", tmp_path / "s",
        "--masks", masks, "--task", "lp,eao", "--disease", "fatty_liver,splenomegaly", "--workers", "0",
    )  # fmt: skip
    for task in ("lp", "eao"):
        for disease in ("fatty_liver", "splenomegaly"):
            assert f"extract hu-stats/{task}/{disease}" in proc.stdout
            assert Store(tmp_path / "s").view("hu-stats", task, disease).cases() == ["case_00", "case_01"]


def test_a_second_process_on_the_same_store_view_is_refused(cli, tmp_path: Path) -> None:
    """Two extractions into one view would do the work twice and delete each other's temporaries."""
    from ctfm.core.fsutil import exclusive_use

    root = _bench(tmp_path, n=2)
    view = Store(tmp_path / "store").view("hu-stats", "lp", "full")
    args = ("extract", "--extractor", "hu-stats", "--images", root / "images", "--store", tmp_path / "store")
    with exclusive_use(view.dir):  # this test process plays the other run
        busy = cli(*args, check=False)
    assert (busy.returncode, busy.stderr.strip()) == (
        2,
        f"error: {view.dir}: in use by another ctfm process (pid {os.getpid()}); wait for it or use another "
        "folder",
    )
    assert not view.cases()
    cli(*args)  # free again
    assert view.cases() == ["case_00", "case_01"]


def test_odd_files_fail_alone_and_a_vanished_mask_keeps_its_embedding(cli, tmp_path: Path) -> None:
    """A file name the store cannot hold, a folder and a broken link named like scans each fail alone (the
    run goes on, exit 1); an uncompressed scan finds its `.nii.gz` mask; a stored case whose mask went
    missing fails this run but keeps its embedding."""
    import gzip

    root = _bench(tmp_path)
    images, masks = root / "images", root / "fg_masks" / "fatty_liver"
    shutil.copy2(images / "case_00.nii.gz", images / "scan 01.nii.gz")
    shutil.copy2(masks / "case_00.nii.gz", masks / "scan 01.nii.gz")
    (images / "case_02.nii").write_bytes(gzip.decompress((images / "case_02.nii.gz").read_bytes()))
    (images / "case_02.nii.gz").unlink()
    (images / "folder_case.nii.gz").mkdir()
    (images / "gone.nii.gz").symlink_to(tmp_path / "nowhere.nii.gz")
    store = tmp_path / "store"
    args = ("extract", "--extractor", "hu-stats", "--images", images, "--store", store)
    roi = ("--masks", root / "fg_masks", "--disease", "fatty_liver", "--workers", "0")
    first = cli(*args, *roi, check=False)
    assert first.returncode == 1, first.stderr
    view = Store(store).view("hu-stats", "lp", "fatty_liver")
    assert view.cases("ok") == ["case_00", "case_01", "case_02", "case_03"]
    out = first.stdout
    assert "scan 01.nii.gz: case name 'scan 01' is not a safe file name" in out and "rename the file" in out
    assert "folder_case.nii.gz is a folder, not a NIfTI file" in out
    assert "gone.nii.gz is a broken link, not a NIfTI file" in out

    embedding = view.read_case("case_01")
    (masks / "case_01.nii.gz").unlink()
    again = cli(*args, *roi, check=False)
    assert again.returncode == 1 and "extracted again" not in again.stdout
    assert "no mask" in again.stdout and "kept the embedding already stored" in again.stdout
    assert view.record("case_01").status == "ok"
    np.testing.assert_array_equal(view.read_case("case_01"), embedding)
