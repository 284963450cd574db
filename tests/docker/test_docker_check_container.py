"""`ctfm check-container` and the baseline image built by build_images.sh, on the real engine."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from docker_support import nonce_image, save_tarball, write_cases

from ctfm.store import Store

pytestmark = pytest.mark.docker


def _row(stdout: str, check: str) -> tuple[str, str]:
    """(pass/FAIL, the detail) of one check's row in the check-container table (wrapped lines joined)."""
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip("│ ").startswith(check)]
    assert starts, f"no row for {check!r} in:\n{stdout}"
    cells = lines[starts[0]].split("│")
    detail = [cells[3].strip()]
    for line in lines[starts[0] + 1 :]:
        parts = line.split("│")
        if len(parts) < 4 or parts[1].strip():
            break
        detail.append(parts[3].strip())
    return cells[2].strip(), " ".join(d for d in detail if d)


def _result(stdout: str, check: str) -> str:
    return _row(stdout, check)[0]


def test_the_baseline_tarballs_follow_the_reference_naming_rule(baseline):
    """The reference runner loads baseline_lp.tar.gz and starts baseline_lp:latest."""
    for task in ("lp", "eao"):
        with tarfile.open(baseline[task]) as tar:
            manifest = json.loads(tar.extractfile("manifest.json").read())
        assert [m["RepoTags"] for m in manifest] == [[f"baseline_{task}:latest"]]


@pytest.mark.parametrize(("task", "dim"), [("lp", None), ("eao", "D = 12")])
def test_baseline_tarball_passes_on_synthetic_test_demo(baseline, cli, task, dim):
    """The participants' dry run on the shipped baselines: synthetic test_demo, ROI masks, both runs agree;
    the EAO tokens' D = 12 suits the reference EAO head (4 attention heads)."""
    proc = cli("check-container", baseline[task], "--task", task, "--disease", "liver_cyst", "--memory", "2g")
    assert "PASS: the container respects the contract" in proc.stdout
    for check in ("image name", "reference command", "outputs valid", "deterministic", "peak memory"):
        assert _result(proc.stdout, check) == "pass", check
    status, detail = _row(proc.stdout, "one feature size")
    assert status == "pass" and (dim is None or detail == dim), detail


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


def test_a_tarball_the_reference_cannot_start_fails_with_the_fix(test_image, docker_client, tmp_path, cli):
    """Named acme_lp.tar.gz but holding `registry.local/acme:v7`: the reference runner would start
    acme_lp:latest and produce nothing. ctfm runs it (by id) and fails the naming check only."""
    image_id = nonce_image(docker_client, test_image("good"))
    tarball = save_tarball(docker_client, image_id, tmp_path / "acme_lp.tar.gz", ["registry.local/acme:v7"])
    docker_client.images.remove(image_id)
    images = write_cases(tmp_path / "images", 2)
    proc = cli("check-container", tarball, "--images", images, "--memory", "1g", check=False)
    assert proc.returncode == 1
    status, detail = _row(proc.stdout, "image name")
    assert status == "FAIL" and "starts acme_lp:latest" in detail and "registry.local/acme:v7" in detail
    assert _result(proc.stdout, "outputs valid") == "pass"
    assert image_id not in {i.id for i in docker_client.images.list(all=True)}


def test_images_the_reference_command_cannot_run_fail_with_the_reason(
    test_image, image_builder, tmp_path, cli
):
    """No /bin/bash, no entry script in the working directory, or a script reading INPUT_DIR/OUTPUT_DIR (set
    by an older ctfm only): each fails the `reference command` check, naming the reason."""
    images = write_cases(tmp_path / "images", 1)
    good = test_image("good")
    cases = {
        "ctfm-nobash:1": (f"FROM {good}\nRUN rm -f /usr/bin/bash /bin/bash\n", "the image has no /bin/bash"),
        "ctfm-noscript:1": (f"FROM {good}\nWORKDIR /srv\n", "no extract_feat_LP.sh in the image's working directory /srv"),
        test_image("envdirs"): (None, "reads $INPUT_DIR, $OUTPUT_DIR, which the reference runner does not set"),
    }  # fmt: skip
    for tag, (dockerfile, reason) in cases.items():
        if dockerfile is not None:
            image_builder(tag, dockerfile)
        proc = cli("check-container", tag, "--images", images, "--memory", "1g", check=False)
        assert proc.returncode == 1, proc.stdout
        status, detail = _row(proc.stdout, "reference command")
        assert status == "FAIL" and reason in detail, (tag, detail)


def test_stray_files_get_the_same_verdict_from_check_container_and_extract(test_image, tmp_path, cli):
    """A log beside the outputs: reported and never stored by both, failing neither."""
    images = write_cases(tmp_path / "images", 2)
    tag = test_image("stray")
    proc = cli("check-container", tag, "--images", images, "--memory", "1g")
    status, detail = _row(proc.stdout, "contract")
    assert status == "pass" and "stray files (reported, not stored, as by extract): run.log" in detail
    out = cli("extract", "--image", tag, "--images", images, "--store", tmp_path / "s", "--memory", "1g")
    assert "stray files (reported, not stored): run.log" in " ".join(out.stdout.split())
    assert Store(tmp_path / "s").view("ctfm-test", "lp", "full").cases() == ["case_0000", "case_0001"]
    assert not list((tmp_path / "s").rglob("run.log"))


def test_collapsed_embeddings_fail(test_image, tmp_path, cli):
    """Identical inputs give identical embeddings for every case: flagged as collapsed."""
    images = write_cases(tmp_path / "images", 1)
    (images / "case_0001.nii.gz").write_bytes((images / "case_0000.nii.gz").read_bytes())
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
