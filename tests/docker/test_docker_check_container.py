"""`ctfm check-container` and the baseline image built by scripts/build_images.sh, on the real engine."""

from __future__ import annotations

import numpy as np
import pytest
from docker_support import write_cases

from ctfm.store import Store

pytestmark = pytest.mark.docker


def _row(stdout: str, check: str) -> tuple[str, str]:
    """(pass/FAIL, first line of the detail) of one check's row in the check-container table."""
    rows = [line for line in stdout.splitlines() if line.strip("│ ").startswith(check)]
    assert rows, f"no row for {check!r} in:\n{stdout}"
    cells = rows[0].split("│")
    return cells[2].strip(), cells[3].strip()


def _result(stdout: str, check: str) -> str:
    return _row(stdout, check)[0]


def test_baseline_tarball_passes_on_synthetic_test_demo(baseline, cli):
    """The participants' dry run on the shipped baseline: synthetic test_demo, ROI masks, both runs agree."""
    proc = cli("check-container", baseline["lp"], "--task", "lp", "--disease", "liver_cyst", "--memory", "2g")
    assert "PASS: the container respects the contract" in proc.stdout
    for check in ("outputs valid", "deterministic", "embeddings informative", "peak memory"):
        assert _result(proc.stdout, check) == "pass", check


def test_baseline_eao_matches_the_in_process_extractor(baseline, tmp_path, cli):
    """The container's hu-stats and the in-process hu-stats give the same embeddings."""
    images = write_cases(tmp_path / "images", 3)
    cli(
        "extract", "--image", baseline["tag"], "--images", images, "--store", tmp_path / "s",
        "--task", "eao", "--memory", "2g",
    )  # fmt: skip
    from ctfm.extract.extractors.hu_stats import from_files

    view = Store(tmp_path / "s").view(baseline["tag"].split(":")[0], "eao", "full")
    assert view.cases() == ["case_0000", "case_0001", "case_0002"]
    for case in view.cases():
        expected = from_files(images / f"{case}.nii.gz", None, "eao")
        np.testing.assert_allclose(view.read_case(case), expected, rtol=1e-6)


@pytest.mark.parametrize("mode", ["nan", "junk"])
def test_bad_image_fails(mode, test_image, tmp_path, cli):
    images = write_cases(tmp_path / "images", 2)
    proc = cli("check-container", test_image(mode), "--images", images, "--memory", "1g", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert _result(proc.stdout, "outputs valid") == "FAIL"


def test_collapsed_embeddings_fail(test_image, tmp_path, cli):
    """Identical inputs give identical embeddings for every case: flagged as collapsed."""
    images = write_cases(tmp_path / "images", 1)
    for i in (1,):
        (images / f"case_000{i}.nii.gz").write_bytes((images / "case_0000.nii.gz").read_bytes())
    proc = cli("check-container", test_image("good"), "--images", images, "--memory", "1g", check=False)
    assert proc.returncode == 1
    status, detail = _row(proc.stdout, "embeddings informative")
    assert status == "FAIL" and detail.startswith("collapsed:"), detail


def test_a_hanging_image_gets_clear_verdicts(test_image, tmp_path, cli):
    """No output at all: every row that judges outputs fails and says why, none contradicts itself."""
    images = write_cases(tmp_path / "images", 2)
    (images / "case_0000.nii.gz").unlink()  # left: the case the image hangs on
    proc = cli(
        "check-container", test_image("hang"), "--images", images, "--memory", "1g", "--timeout-per-case", "3",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for row in ("one feature size", "embeddings informative"):
        assert _row(proc.stdout, row) == ("FAIL", "no valid output to judge"), row


def test_peak_memory_of_a_short_run_is_its_real_peak(test_image, tmp_path, cli):
    """A container that touches 256 MiB and exits well within a second: the engine's stats answer about
    once a second, so they saw only its first megabytes (4.5 MB when they were the source);
    the cgroup's own peak counter, polled every 50 ms, sees the 256 MiB."""
    images = write_cases(tmp_path / "images", 2)  # the image hogs on case_0001
    proc = cli("check-container", test_image("hog", HOG_MIB="256"), "--images", images, "--memory", "2g")
    status, detail = _row(proc.stdout, "peak memory")
    value, unit = detail.split()[:2]
    assert status == "pass" and unit == "MB" and 268.4 <= float(value) < 1000, detail
