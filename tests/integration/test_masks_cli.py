"""`ctfm masks` and `data_utils/get_fg_mask.py` end to end, as a user runs them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ctfm.core.benchmark import load_benchmark
from ctfm.core.labels import read_labels
from masks_fixtures import expected_masks, phantom, save, to_v1

REPO = Path(__file__).resolve().parents[2]
ROI = list(load_benchmark().roi_diseases)


@pytest.fixture(scope="module")
def bench(request, tmp_path_factory) -> Path:
    """The shared synthetic benchmark when the suite provides it, else a small one of our own."""
    try:
        return request.getfixturevalue("synth_bench")
    except pytest.FixtureLookupError:
        from ctfm.data.synth import generate_benchmark

        return generate_benchmark(tmp_path_factory.mktemp("masks_bench"), cases=8, seed=0, workers=2)


def _array(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def _check_against_numpy(bench: Path, out: Path) -> int:
    """Every written mask equals the OR of `label == id` over its organs, for exactly the CSV's cases."""
    checked = 0
    for disease in ROI:
        cases = set(read_labels(bench / "labels" / f"{disease}.csv", disease)["case"])
        written = {p.name[: -len(".nii.gz")] for p in (out / disease).glob("*.nii.gz")}
        assert written == cases, disease
    for case in sorted(cases)[:4]:
        img = nib.load(str(bench / "totalseg" / f"{case}.nii.gz"))
        label = np.asanyarray(img.dataobj)
        for disease, want in expected_masks(label).items():
            got_img = nib.load(str(out / disease / f"{case}.nii.gz"))
            assert np.allclose(got_img.affine, img.affine) and got_img.get_data_dtype() == np.uint8
            assert np.array_equal(np.asanyarray(got_img.dataobj), want), (case, disease)
            checked += 1
    return checked


def test_ctfm_masks_on_synthetic_benchmark(cli, bench, tmp_path):
    out = tmp_path / "fg_masks"
    proc = cli(
        "masks",
        "--totalseg",
        bench / "totalseg",
        "--out",
        out,
        "--labels",
        bench / "labels",
        "--workers",
        "2",
    )
    assert "2 worker(s)" in proc.stderr
    assert _check_against_numpy(bench, out) == 4 * len(ROI)
    report = pd.read_csv(out / "masks_report.csv")
    assert set(report["status"]) <= {"ok", "organ_missing", "empty"} and len(report)
    again = cli("masks", "--totalseg", bench / "totalseg", "--out", out, "--labels", bench / "labels")
    assert "0 written" in again.stderr and "0 label map(s) read" in again.stderr
    one = ROI[0]
    cli("masks", "--totalseg", bench / "totalseg", "--out", out, "--disease", one, "--force")
    redone = pd.read_csv(out / "masks_report.csv")  # one disease redone: the others' rows are kept
    pd.testing.assert_frame_equal(
        redone.drop(columns="message"),
        report.sort_values(["disease", "case"], ignore_index=True).drop(columns="message"),
    )


def test_get_fg_mask_reference_flags(bench, tmp_path):
    out = tmp_path / "fg"
    cmd = [sys.executable, str(REPO / "data_utils" / "get_fg_mask.py"), "--csv-dir", str(bench / "labels")]
    cmd += ["--labels-dir", str(bench / "totalseg"), "--output-dir", str(out), "--num-workers", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "by 2 worker(s)" in proc.stdout
    _check_against_numpy(bench, out)
    one = subprocess.run([*cmd[:-1], "1"], capture_output=True, text=True, timeout=300)
    assert one.returncode == 0 and "0 masks written by 1 worker(s)" in one.stdout


def test_cli_corrupt_and_v1_maps_fail_but_others_are_written(cli, tmp_path):
    label, affine = phantom()
    ts = tmp_path / "ts"
    save(label, affine, ts / "good.nii.gz")
    save(to_v1(label), affine, ts / "old.nii.gz")
    (ts / "broken.nii.gz").write_bytes((ts / "good.nii.gz").read_bytes()[:2000])
    proc = cli("masks", "--totalseg", ts, "--out", tmp_path / "out", "--disease", "gallstone", check=False)
    assert proc.returncode == 1, proc.stderr
    assert "2 case(s) failed" in proc.stderr
    report = pd.read_csv(tmp_path / "out" / "masks_report.csv").set_index("case")
    assert report.loc["good", "status"] == "ok" and report.loc["broken", "status"] == "failed"
    assert "--class-map" in report.loc["old", "message"] and report.loc["old", "status"] == "failed"
    assert np.array_equal(_array(tmp_path / "out" / "gallstone" / "good.nii.gz"), label == 4)


def test_cli_bad_option_is_one_red_line(cli, tmp_path):
    (tmp_path / "ts").mkdir()
    proc = cli(
        "masks", "--totalseg", tmp_path / "ts", "--out", tmp_path / "o", "--disease", "ascites", check=False
    )
    assert proc.returncode == 2 and "not an ROI disease" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("totalsegmentator") is not None, reason="TotalSegmentator installed"
)
def test_run_totalsegmentator_absent_says_so_and_goes_on(cli, tmp_path):
    label, affine = phantom()
    save(label, affine, tmp_path / "ts" / "a.nii.gz")
    (tmp_path / "images").mkdir()
    proc = cli(
        "masks", "--totalseg", tmp_path / "ts", "--out", tmp_path / "out", "--disease", "splenomegaly",
        "--run-totalsegmentator", "--images", tmp_path / "images",
    )  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if "TotalSegmentator is not installed" in line]
    assert len(lines) == 1 and "ctfm[totalseg]" in lines[0]
    assert (tmp_path / "out" / "splenomegaly" / "a.nii.gz").is_file()
