"""The container runner against the real Docker engine: isolation, failures, timing, resumability."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from docker_support import BAD_CASE, ctfm_containers, write_cases

from ctfm.errors import ContainerError
from ctfm.extract.docker import ContainerRunner, RunSettings, run_containers
from ctfm.store import Store

pytestmark = pytest.mark.docker


def run_tag(store: Path, tag: str, images: Path, **settings) -> object:
    settings.setdefault("memory", "1g")
    (report,) = run_containers(store, images, RunSettings(**settings), tags=[tag])
    return report


def statuses(report) -> dict[str, str]:
    return {c: o.status for c, o in sorted(report.outcomes.items())}


def test_good_container_batched_and_per_case_agree(tmp_path, cases4, test_image, docker_client, no_leftovers):
    tag = test_image("good")
    image_id = docker_client.images.get(tag).id
    batched = run_tag(tmp_path / "a", tag, cases4, batch_cases=3)
    per_case = run_tag(tmp_path / "b", tag, cases4, per_case=True)
    assert statuses(batched) == dict.fromkeys([f"case_{i:04d}" for i in range(4)], "ok")
    assert statuses(per_case) == statuses(batched)
    assert len(batched.startups) == 1  # one chunk of 3 cases (the single-case chunk has no start-up split)
    va = Store(tmp_path / "a").view("ctfm-test", "lp", "full")
    vb = Store(tmp_path / "b").view("ctfm-test", "lp", "full")
    for case in va.cases():
        np.testing.assert_array_equal(va.read_case(case), vb.read_case(case))
        assert va.record(case).image_id == image_id
    timing = pd.read_csv(batched.timing_csv)
    assert list(timing.columns) == ["CaseName", "RunningTime"]
    assert sorted(name.removesuffix(".nii.gz") for name in timing.CaseName) == va.cases()
    assert (pd.read_csv(per_case.timing_csv).RunningTime > 0).all()  # per case: whole container wall time
    assert "tool mode=good" in batched.log_path.read_text()
    # rerun: everything already ok for this image id is skipped, nothing new starts
    again = run_tag(tmp_path / "a", tag, cases4)
    assert again.skipped == 4 and not again.outcomes


def test_eao_with_masks_through_the_cli(tmp_path, test_image, cli, no_leftovers):
    images = write_cases(tmp_path / "images", 3, mask_dir=tmp_path / "fg_masks" / "liver_cyst")
    store = tmp_path / "store"
    proc = cli(
        "extract", "--image", test_image("good"), "--images", images, "--store", store, "--task", "eao",
        "--masks", tmp_path / "fg_masks", "--disease", "liver_cyst", "--memory", "1g",
    )  # fmt: skip
    assert "container extraction" in proc.stdout
    view = Store(store).view("ctfm-test", "eao", "liver_cyst")
    assert view.cases() == ["case_0000", "case_0001", "case_0002"]
    arr = view.read_case("case_0000")
    assert arr.shape == (6, 2, 2, 2)
    assert "masks=True" in (view.dir / "container.log").read_text()
    # the masked mean differs from the unmasked one: the container really read MASKS_DIR
    full = run_tag(tmp_path / "full", test_image("good"), images, task="eao")
    assert full.all_ok
    unmasked = Store(tmp_path / "full").view("ctfm-test", "eao", "full").read_case("case_0000")
    assert not np.allclose(arr, unmasked)
    # a mask gone missing fails its case this run and keeps the stored embedding; a file the store cannot
    # name fails alone; the run goes on and exits 1
    (tmp_path / "fg_masks" / "liver_cyst" / "case_0000.nii.gz").unlink()
    (images / "case 9.nii.gz").write_bytes((images / "case_0001.nii.gz").read_bytes())
    again = cli(
        "extract", "--image", test_image("good"), "--images", images, "--store", store, "--task", "eao",
        "--masks", tmp_path / "fg_masks", "--disease", "liver_cyst", "--memory", "1g", check=False,
    )  # fmt: skip
    assert again.returncode == 1, again.stdout + again.stderr
    flat = " ".join(again.stdout.split())
    assert "kept the embedding already stored" in flat and "not a safe file name" in flat, again.stdout
    assert view.record("case_0000").status == "ok"
    np.testing.assert_array_equal(view.read_case("case_0000"), arr)


def test_hanging_container_times_out_and_others_continue(tmp_path, cases4, test_image, no_leftovers):
    report = run_tag(tmp_path / "s", test_image("hang"), cases4, batch_cases=2, timeout_per_case=6)
    expected = dict.fromkeys([f"case_{i:04d}" for i in range(4)], "ok")
    expected[BAD_CASE] = "timeout"
    assert statuses(report) == expected
    assert "container killed" in report.outcomes[BAD_CASE].error
    rec = Store(tmp_path / "s").view("ctfm-test", "lp", "full").record(BAD_CASE)
    assert rec.status == "timeout"
    assert rec.seconds >= 6  # the timing CSV lists the seconds a timed-out case used, not 0


def test_a_container_filling_the_disk_is_stopped(tmp_path, cases4, test_image, no_leftovers):
    """The output folder is on the host's disk: a container writing more than its cases may is killed long
    before its time limit, and only its bad case fails."""
    mib = 1 << 20
    report = run_tag(
        tmp_path / "s",
        test_image("fill"),
        cases4,
        batch_cases=4,
        timeout_per_case=600,
        max_output_bytes=16 * mib,
    )
    expected = dict.fromkeys([f"case_{i:04d}" for i in range(4)], "ok")
    expected[BAD_CASE] = "failed"
    assert statuses(report) == expected
    assert f"wrote over {16 * mib} bytes into its output folder" in report.outcomes[BAD_CASE].error


def test_crash_on_one_case_is_retried_alone(tmp_path, cases4, test_image, no_leftovers):
    report = run_tag(tmp_path / "s", test_image("crash"), cases4)
    assert statuses(report)[BAD_CASE] == "failed"
    assert "exited with code 3" in report.outcomes[BAD_CASE].error
    assert sum(s == "ok" for s in statuses(report).values()) == 3
    assert "crashing on case_0001" in report.log_path.read_text()


def test_out_of_memory_is_named_as_such(tmp_path, cases4, test_image, no_leftovers):
    report = run_tag(tmp_path / "s", test_image("hog"), cases4, memory="256m")
    assert statuses(report)[BAD_CASE] == "failed"
    assert "container killed: out of memory (limit 256m)" in report.outcomes[BAD_CASE].error
    assert sum(s == "ok" for s in statuses(report).values()) == 3


def test_nan_output_fails_that_case_only(tmp_path, cases4, test_image, no_leftovers):
    # one batch of 4 cases, their outputs 1 s apart
    report = run_tag(tmp_path / "s", test_image("nan", DELAY="1"), cases4)
    assert statuses(report)[BAD_CASE] == "failed"
    assert "NaN" in report.outcomes[BAD_CASE].error
    view = Store(tmp_path / "s").view("ctfm-test", "lp", "full")
    assert BAD_CASE not in view.cases()
    assert len(view.cases()) == 3
    # the timing CSV gives the rejected case the time it took in its batch, as the others, not 0
    assert view.record(BAD_CASE).seconds >= 0.8


def test_unexpected_files_and_wrong_shapes(tmp_path, cases4, test_image, no_leftovers):
    report = run_tag(tmp_path / "s", test_image("junk"), cases4)
    assert statuses(report)[BAD_CASE] == "failed"
    assert "expects 1-D" in report.outcomes[BAD_CASE].error
    assert sorted(set(report.unexpected)) == ["extra.txt", "zz_symlink.h5"]
    stored = {p.name for p in (tmp_path / "s").rglob("*") if p.is_file()}
    assert "extra.txt" not in stored and "zz_symlink.h5" not in stored
    assert not any("passwd" in p for p in stored)


def test_network_is_unreachable_inside(tmp_path, cases4, test_image, no_leftovers):
    report = run_tag(tmp_path / "s", test_image("net"), cases4)
    assert report.all_ok and len(report.outcomes) == 4
    log = report.log_path.read_text()
    assert "network blocked" in log
    assert "NETWORK REACHABLE" not in log


def test_isolation_settings(tmp_path, cases4, test_image, docker_client):
    """The container as the engine sees it: every hardening flag set, labels for cleanup."""
    seen = {}

    class Spy(ContainerRunner):
        def _forget(self, container):
            container.reload()
            seen.update(container.attrs["HostConfig"])
            seen["Config"] = container.attrs["Config"]
            seen["Mounts"] = container.attrs["Mounts"]
            super()._forget(container)

    settings = RunSettings(memory="1g", pids_limit=256, shm_size="64m")
    with Spy(tmp_path / "s", settings) as runner:
        runner.run_team(runner.resolve_tag(test_image("good")), cases4)
    assert seen["NetworkMode"] == "none"
    assert seen["ReadonlyRootfs"] is True
    assert seen["CapDrop"] == ["ALL"]
    assert any("no-new-privileges" in o for o in seen["SecurityOpt"])
    assert seen["PidsLimit"] == 256
    assert seen["Memory"] == seen["MemorySwap"] == 1 << 30
    assert seen["ShmSize"] == 64 << 20
    assert seen["CpusetCpus"]
    assert "/tmp" in seen["Tmpfs"]
    assert seen["Config"]["User"] not in ("", "0", "root", "0:0")
    assert seen["Config"]["Labels"]["ctfm.pid"] == str(os.getpid())
    modes = {m["Destination"]: m["RW"] for m in seen["Mounts"]}
    assert modes == {"/workspace/inputs": False, "/workspace/outputs": True}


def test_gpus_without_nvidia_runtime_is_a_clear_error(
    tmp_path, cases4, test_image, docker_client, no_leftovers
):
    if "nvidia" in docker_client.info().get("Runtimes", {}):
        pytest.skip("this engine has the NVIDIA runtime")
    with pytest.raises(ContainerError, match="NVIDIA runtime"):
        run_tag(tmp_path / "s", test_image("good"), cases4, gpus=("0",))


def _team_tarball(docker_client, base_id: str, tag: str, tarball: Path, saved_as: str | None = None):
    """A distinct image (new id, shared layers, so removing it leaves the test images alone) built as ``tag``
    and saved as a team tarball naming it ``saved_as`` (default: ``tag``), then removed from the engine."""
    img, _ = docker_client.images.build(
        path=str(Path(__file__).parent / "images"),
        tag=tag,
        buildargs={"BASE": base_id, "MODE": "good"},
        labels={"ctfm.test.nonce": str(time.time_ns())},
        network_mode="none",
        rm=True,
    )
    if saved_as is not None:
        img.tag(*saved_as.rsplit(":", 1))
        img.reload()
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tarball.open("wb") as fh:
        for chunk in img.save(named=saved_as or True):
            fh.write(chunk)
    docker_client.images.remove(img.id, force=True)
    return img


def test_tarball_with_unusual_tag_is_loaded_recorded_and_removed(
    tmp_path, cases4, test_image, docker_client, no_leftovers
):
    """The team's tarball holds `registry.local/acme-sub:v7`, not `acme:latest`; its id is what counts."""
    base = docker_client.images.get(test_image("good"))
    teams = tmp_path / "teams"
    img = _team_tarball(docker_client, base.id, "registry.local/acme-sub:v7", teams / "acme_lp.tar.gz")
    (report,) = run_containers(tmp_path / "s", cases4, RunSettings(memory="1g"), tarballs_dir=teams)
    assert report.team == "acme" and report.all_ok
    assert report.image_id == img.id
    view = Store(tmp_path / "s").view("acme", "lp", "full")
    assert {view.record(c).image_id for c in view.cases()} == {img.id}
    assert view.record("case_0000").extractor_version == "registry.local/acme-sub:v7"
    assert img.id not in {i.id for i in docker_client.images.list(all=True)}  # removed after the run


def test_a_tarball_cannot_take_over_another_images_tag(
    tmp_path, cases4, test_image, docker_client, no_leftovers, monkeypatch
):
    """`docker load` moves a tag onto the loaded image: a team whose tarball carries the organizer's tag
    must not be run, recorded or removed in that image's place. Also: a relative --store works."""
    organizer = docker_client.images.get(test_image("good"))
    organizer.tag("ctfm-victim", "1")
    teams = tmp_path / "teams"
    img = _team_tarball(
        docker_client, organizer.id, "ctfm-thief:1", teams / "thief_lp.tar.gz", "ctfm-victim:1"
    )
    organizer.tag("ctfm-victim", "1")
    monkeypatch.chdir(tmp_path)
    settings = RunSettings(memory="1g")
    thief, victim = run_containers(Path("s"), cases4, settings, tarballs_dir=teams, tags=["ctfm-victim:1"])
    assert thief.all_ok and victim.all_ok
    assert (thief.image_id, victim.image_id) == (img.id, organizer.id)
    for team, image_id in (("thief", img.id), ("ctfm-victim", organizer.id)):
        view = Store(tmp_path / "s").view(team, "lp", "full")
        assert {view.record(c).image_id for c in view.cases()} == {image_id}
    tag_owner = docker_client.images.get("ctfm-victim:1").id
    assert tag_owner == organizer.id  # the tag survived the thief's removal
    assert img.id not in {i.id for i in docker_client.images.list(all=True)}

    # A second image in the same tarball, claiming the tag: never run, its tag goes back, it is removed.
    first = _team_tarball(docker_client, organizer.id, "ctfm-first:1", tmp_path / "first.tar")
    second = _team_tarball(
        docker_client, organizer.id, "ctfm-second:1", tmp_path / "second.tar", "ctfm-victim:1"
    )
    docker_client.images.load((tmp_path / "first.tar").read_bytes())
    docker_client.images.load((tmp_path / "second.tar").read_bytes())  # takes ctfm-victim:1 for the save
    both = tmp_path / "two" / "pair_lp.tar.gz"
    both.parent.mkdir()
    subprocess.run(["docker", "save", "-o", str(both), "ctfm-first:1", "ctfm-victim:1"], check=True)
    for image in (first, second):
        docker_client.images.remove(image.id, force=True)
    organizer.tag("ctfm-victim", "1")
    with ContainerRunner(tmp_path / "s2", settings) as runner:
        loaded = runner.load_tarball(both)
        assert loaded.image_id in (first.id, second.id)
        assert docker_client.images.get("ctfm-victim:1").id == organizer.id
        others = {first.id, second.id} - {loaded.image_id}
        assert not others & {i.id for i in docker_client.images.list(all=True)}  # the unused one is gone
        runner.release(loaded)
    docker_client.images.remove("ctfm-victim:1")


def _extract_cmd(tag: str, images: Path, store: Path) -> list[str]:
    return [
        sys.executable, "-m", "ctfm.cli.main", "extract", "--image", tag, "--images", str(images),
        "--store", str(store), "--batch-cases", "3", "--memory", "1g",
    ]  # fmt: skip


def test_kill_runner_and_resume(tmp_path, test_image, docker_client):
    """SIGKILL the runner mid-run: finished cases survive, the rerun redoes none, cleans up, matches."""
    tag = test_image("slow", SLOW="0.6")
    images = write_cases(tmp_path / "images", 6)
    store = tmp_path / "killed"
    proc = subprocess.Popen(
        _extract_cmd(tag, images, store), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    view = Store(store).view("ctfm-test", "lp", "full")
    deadline = time.monotonic() + 120
    while len(view.cases()) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {c: view.record(c).written_at for c in view.cases()}
    assert 2 <= len(done_before) < 6

    def leftovers():
        return ctfm_containers(docker_client, proc.pid) or list((store / ".ctfm-work").iterdir())

    deadline = time.monotonic() + 60  # the engine keeps the container: the runner's watchdog removes it
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leftovers(), "the dead runner's container or work folder was left behind"

    subprocess.run(_extract_cmd(tag, images, store), check=True, capture_output=True)
    assert len(view.cases()) == 6
    for case, written in done_before.items():
        assert view.record(case).written_at == written, f"{case} was redone"
    assert not list((store / ".ctfm-work").iterdir())

    clean = tmp_path / "clean"
    subprocess.run(_extract_cmd(tag, images, clean), check=True, capture_output=True)
    ref = Store(clean).view("ctfm-test", "lp", "full")
    assert ref.cases() == view.cases()
    for case in ref.cases():
        np.testing.assert_array_equal(ref.read_case(case), view.read_case(case))
        assert ref.record(case).checksum == view.record(case).checksum


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_runner_removes_its_containers(sig, tmp_path, test_image, docker_client):
    """Ctrl-C (SIGINT) or SIGTERM mid-run: the runner removes its running container and work folder."""
    tag = test_image("slow", SLOW="30")
    images = write_cases(tmp_path / "images", 2)
    store = tmp_path / "s"
    proc = subprocess.Popen(_extract_cmd(tag, images, store), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not ctfm_containers(docker_client, proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ctfm_containers(docker_client, proc.pid), "no container started"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert b"Traceback" not in err, err.decode()
    assert not ctfm_containers(docker_client, proc.pid)
    assert not list((store / ".ctfm-work").iterdir())


def test_broken_tarball_and_image_without_shell_do_not_stop_the_others(
    tmp_path, cases4, test_image, docker_client, cli, no_leftovers
):
    teams = tmp_path / "teams"
    teams.mkdir()
    (teams / "broken_lp.tar.gz").write_bytes(b"this is not a docker save tarball")
    # An image whose entry cannot start: `sh` is shadowed by a directory on PATH (/usr/local/bin).
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(f"FROM {test_image('good')}\nENV PATH=/nosh\n")
    docker_client.images.build(path=str(tmp_path / "ctx"), tag="ctfm-nosh:1", network_mode="none", rm=True)
    proc = cli(
        "extract", "--containers", teams, "--image", "ctfm-nosh:1", "--image", test_image("good"),
        "--images", cases4, "--store", tmp_path / "s", "--memory", "1g", check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "not run" in proc.stdout and "broken" in proc.stdout
    assert "ctfm-nosh case_0000: no output (container exited with code 127)" in proc.stdout
    good = Store(tmp_path / "s").view("ctfm-test", "lp", "full")
    assert len(good.cases()) == 4
