"""Hostile and careless containers against the real engine: nothing a container writes stops the run, and
what it may write is capped by the kernel (output folder, scratch, data in unlinked files)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from docker_support import BAD_CASE, run_tag, statuses, write_cases

from ctfm.extract.containers import ContainerRunOptions, RunSettings, run_containers
from ctfm.extract.containers.folders import mount_tmpfs, remove_tree
from ctfm.store import Store

sys.path.insert(0, str(Path(__file__).parent / "images"))
from fuzz import KINDS  # the mutations the fuzz image applies, case i getting KINDS[i % len]

pytestmark = pytest.mark.docker
CASES4 = [f"case_{i:04d}" for i in range(4)]
MIB = 1 << 20


def _unlinked_mib(log: str) -> tuple[int, str]:
    """(MiB the container managed to write into its unlinked file, the error that stopped it)."""
    match = re.search(r"unlinked: wrote (\d+) MiB(?:, then (.+))?", log)
    assert match, log
    return int(match.group(1)), match.group(2) or ""


def test_a_container_may_write_scratch_where_real_models_do(
    tmp_path, cases4, test_image, image_builder, engine, root_only, no_leftovers
):
    """A cache beside its code (its working directory), in /tmp and under $HOME works, as under the
    reference: the whole image is writable where the engine caps it, else (as root) those folders are
    overlays of the image's own files. Each container starts from the image (no earlier cache), and a
    non-root user writes its own $HOME, which holds files in the image."""
    assert engine.quota or engine.overlay
    report = run_tag(tmp_path / "a", test_image("scratch", SCRATCH_APP="1"), cases4, per_case=True)
    log = report.log_path.read_text()
    assert (
        report.all_ok
        and log.count("scratch: wrote /app/cache, /tmp/ctfm-cache, /root/.cache/model; fresh") == 4
    )
    user = image_builder(
        "ctfm-user:1",
        f"FROM {test_image('scratch', SCRATCH_APP='0')}\nRUN useradd -m -u 1000 app\nUSER app\n",
    )
    as_user = run_tag(tmp_path / "b", user, cases4)
    log = as_user.log_path.read_text()
    assert as_user.all_ok and "scratch: wrote /tmp/ctfm-cache, /home/app/.cache/model; fresh" in log, log


def test_writes_over_the_scratch_cap_fail_that_case_with_the_reason_and_the_run_goes_on(
    tmp_path, cases4, test_image, docker_client, no_leftovers
):
    """100 MiB beside its code against 32 MiB of scratch: the kernel refuses the rest, the container dies on
    that case, which fails saying why; the other cases and the next team are stored."""
    docker_client.images.get(test_image("fill", FILL_DIR=".", FILL_MIB="100")).tag("ctfm-fill", "1")
    try:
        filled, after = run_containers(
            ContainerRunOptions(
                tmp_path / "s",
                cases4,
                RunSettings(memory="1g", scratch="32m"),
                tags=("ctfm-fill:1", test_image("good")),
            )
        )
    finally:
        docker_client.images.remove("ctfm-fill:1")
    expected = dict.fromkeys(CASES4, "ok")
    expected[BAD_CASE] = "failed"
    assert statuses(filled) == expected
    error = filled.outcomes[BAD_CASE].error
    assert "container exited with code 1; it ran out of space: its own file system is capped at 32m" in error
    assert "\n" not in error
    assert after.all_ok and len(after.outcomes) == 4


def test_scratch_is_capped_by_the_kernel_even_in_unlinked_files(tmp_path, cases4, test_image, no_leftovers):
    """300 MiB into an unlinked file under /tmp with 64 MiB of scratch: no folder walk sees such a file, the
    kernel stops it at the cap; the container goes on and its cases are stored."""
    tag = test_image("unlinked", FILL_DIR="/tmp", FILL_MIB="300")
    report = run_tag(tmp_path / "s", tag, cases4, scratch="64m")
    written, error = _unlinked_mib(report.log_path.read_text())
    assert written <= 64 and error in ("No space left on device", "Disk quota exceeded"), (written, error)
    assert report.all_ok


def test_the_output_folder_is_capped_by_the_kernel_even_in_unlinked_files(
    tmp_path, cases4, test_image, root_only, no_leftovers
):
    """The output folder holds at most its cases' budget (here 16 MiB a case, 4 cases): 300 MiB written into
    an unlinked file there stop at 64 MiB, and none of it reaches the store's disk."""
    tag = test_image("unlinked", FILL_DIR="/workspace/outputs", FILL_MIB="300")
    report = run_tag(tmp_path / "s", tag, cases4, max_output_bytes=16 * MIB)
    written, error = _unlinked_mib(report.log_path.read_text())
    assert written <= 64 and error == "No space left on device", (written, error)
    assert report.all_ok
    stored = sum(p.stat().st_size for p in (tmp_path / "s").rglob("*") if p.is_file())
    assert stored < MIB


def test_a_deep_folder_chain_is_reported_and_removed(tmp_path, cases4, test_image, no_leftovers):
    """1,500 nested folders in the output folder: listed one level deep, removed without recursion (or
    unmounted), and the next run on the same store starts normally."""
    tag = test_image("deep", DEPTH="1500")
    report = run_tag(tmp_path / "s", tag, cases4)
    assert report.all_ok and report.stray == ["deep"]
    assert not list((tmp_path / "s" / ".ctfm-work").iterdir())
    again = run_tag(tmp_path / "s", tag, cases4)
    assert again.skipped == 4


def test_a_tiny_file_declaring_a_chunk_per_value_fails_fast_and_the_store_holds_its_own_layout(
    tmp_path, cases4, test_image, no_leftovers
):
    report = run_tag(tmp_path / "s", test_image("chunks"), cases4)
    assert statuses(report)[BAD_CASE] == "failed"
    assert "y_hat is stored in 65536 chunks of shape (1,)" in report.outcomes[BAD_CASE].error
    import h5py

    view = Store(tmp_path / "s").view("ctfm-test", "lp", "full")
    for case in view.cases():  # the store writes its own file, whatever the team's layout
        with h5py.File(view.case_path(case), "r") as fh:
            assert fh["y_hat"].chunks is None


def test_fuzzed_outputs_fail_alone_and_the_next_team_runs(tmp_path, test_image, docker_client, no_leftovers):
    """44 cases in one container, each output mutated (byte flips, truncation, a folder in its place, deep
    folders, many files, links, FIFOs, stray structures): every case ends ok or failed with a reason, never
    stops the run, and the team after it runs normally."""
    n = 4 * len(KINDS)
    images = write_cases(tmp_path / "images", n)
    fuzz, good = test_image("fuzz"), test_image("good")
    docker_client.images.get(fuzz).tag("ctfm-fuzz", "1")
    try:
        settings = RunSettings(memory="1g", batch_cases=n)
        fuzzed, after = run_containers(
            ContainerRunOptions(tmp_path / "s", images, settings, tags=("ctfm-fuzz:1", good))
        )
    finally:
        docker_client.images.remove("ctfm-fuzz:1")
    assert not fuzzed.error and len(fuzzed.outcomes) == n
    assert set(statuses(fuzzed).values()) <= {"ok", "failed"}
    for i, (case, outcome) in enumerate(sorted(fuzzed.outcomes.items())):
        kind = KINDS[i % len(KINDS)]
        if kind in ("folder", "deep", "many", "symlink", "fifo"):
            assert outcome.status == "failed" and "not a regular file" in outcome.error, (case, outcome)
        if kind == "stray":
            assert outcome.status == "ok", (case, outcome)
    assert any(o.status == "failed" and "HDF5" in o.error for o in fuzzed.outcomes.values())
    assert after.all_ok and len(after.outcomes) == n
    assert not list((tmp_path / "s" / ".ctfm-work").iterdir())


def test_a_full_store_disk_fails_with_one_line_and_the_next_team_runs(
    tmp_path, test_image, docker_client, root_only, cli, no_leftovers
):
    """The store's disk fills up (a 128 KiB file system here): the cases or the team that cannot be stored
    fail with one line each, no traceback, and the next team is still run."""
    store = tmp_path / "store"
    store.mkdir()
    mount_tmpfs(store, 128 << 10, 1000)
    images = write_cases(tmp_path / "images", 40)
    docker_client.images.get(test_image("good")).tag("ctfm-second", "1")
    try:
        proc = cli(
            "extract", "--image", test_image("good"), "--image", "ctfm-second:1", "--images", images,
            "--store", store, "--task", "eao", "--memory", "1g", check=False,
        )  # fmt: skip
    finally:
        docker_client.images.remove("ctfm-second:1")
        remove_tree(store)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out
    assert "No space left on device" in out
    failures = [
        line for line in proc.stdout.splitlines() if line.startswith(("failed ", "stopped ", "not run "))
    ]
    assert failures and all("No space left on device" in line for line in failures), proc.stdout
    assert re.search(r"│ ctfm-second +│", proc.stdout)  # the second team has its row: it was run
