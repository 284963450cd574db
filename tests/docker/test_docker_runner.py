"""The container runner against the real Docker engine: contract, isolation, failures, timing, resumability."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from docker_support import (
    BAD_CASE,
    ctfm_containers,
    nonce_image,
    run_tag,
    save_tarball,
    statuses,
    write_cases,
)

from ctfm.core.errors import ContainerError
from ctfm.extract.containers import (
    ContainerRunner,
    ContainerRunOptions,
    RunSettings,
    run_containers,
    run_team,
)
from ctfm.store import Store

pytestmark = pytest.mark.docker
CASES4 = [f"case_{i:04d}" for i in range(4)]


def test_good_container_batched_and_per_case_agree(tmp_path, cases4, test_image, docker_client, no_leftovers):
    """Both modes store the same arrays; a batch's wall time is shared over its cases (never 0), one case per
    container records that container's wall time, start-up included; the timing file has the reference
    name and columns."""
    tag = test_image("good")
    image_id = docker_client.images.get(tag).id
    batched = run_tag(tmp_path / "a", tag, cases4, batch_cases=3)
    per_case = run_tag(tmp_path / "b", tag, cases4, per_case=True)
    assert statuses(batched) == dict.fromkeys(CASES4, "ok")
    assert statuses(per_case) == statuses(batched)
    va = Store(tmp_path / "a").view("ctfm-test", "lp", "full")
    vb = Store(tmp_path / "b").view("ctfm-test", "lp", "full")
    for case in va.cases():
        np.testing.assert_array_equal(va.read_case(case), vb.read_case(case))
        assert va.record(case).image_id == image_id
    assert batched.timing_csv.name == "ctfm-test_feature_extraction_time.csv"
    timing = pd.read_csv(batched.timing_csv)
    assert list(timing.columns) == ["CaseName", "RunningTime"]
    assert list(timing.CaseName) == [f"{c}.nii.gz" for c in CASES4]
    first_batch = timing.RunningTime[:3]
    assert (first_batch > 0).all() and first_batch.nunique() == 1  # the batch's wall time, shared
    assert timing.RunningTime[3] > first_batch[0]  # alone in its container: the whole start-up is its own
    assert (pd.read_csv(per_case.timing_csv).RunningTime > 0).all()
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
    assert arr.shape == (8, 2, 2, 2)
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
    expected = dict.fromkeys(CASES4, "ok")
    expected[BAD_CASE] = "timeout"
    assert statuses(report) == expected
    assert "container killed" in report.outcomes[BAD_CASE].error
    rec = Store(tmp_path / "s").view("ctfm-test", "lp", "full").record(BAD_CASE)
    assert rec.status == "timeout"
    assert rec.seconds >= 6  # the timing CSV lists the seconds a timed-out case used, not 0


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
    # one batch of 4 cases, their outputs 1 s apart: the rejected case still gets its share of the time
    report = run_tag(tmp_path / "s", test_image("nan", DELAY="1"), cases4)
    assert statuses(report)[BAD_CASE] == "failed"
    assert "NaN" in report.outcomes[BAD_CASE].error
    view = Store(tmp_path / "s").view("ctfm-test", "lp", "full")
    assert BAD_CASE not in view.cases()
    assert len(view.cases()) == 3
    seconds = {c: view.record(c).seconds for c in CASES4}
    assert len(set(seconds.values())) == 1 and seconds[BAD_CASE] >= 1.0  # 4 cases x 1 s, shared


def test_wrong_shapes_stray_files_and_symlinks(tmp_path, cases4, test_image, no_leftovers):
    report = run_tag(tmp_path / "s", test_image("junk"), cases4)
    assert statuses(report)[BAD_CASE] == "failed"
    assert "expects 1-D" in report.outcomes[BAD_CASE].error
    assert sorted(set(report.stray)) == ["extra.txt", "zz_symlink.h5"]
    stored = {p.name for p in (tmp_path / "s").rglob("*") if p.is_file()}
    assert "extra.txt" not in stored and "zz_symlink.h5" not in stored
    assert not any("passwd" in p for p in stored)


def test_network_is_unreachable_inside(tmp_path, cases4, test_image, no_leftovers):
    report = run_tag(tmp_path / "s", test_image("net"), cases4)
    assert report.all_ok and len(report.outcomes) == 4
    log = report.log_path.read_text()
    assert "network blocked" in log
    assert "NETWORK REACHABLE" not in log


def test_the_engine_runs_the_reference_command_confined(tmp_path, cases4, test_image, engine):
    """The container as the engine sees it: the reference's command, variables, user and mounts, plus every
    confinement flag, a kernel-capped scratch that depends on the engine, and the labels for cleanup. (Its
    writes in those folders are tested in test_docker_hostile.)"""
    seen = {}

    class Spy(ContainerRunner):
        def _forget(self, container):
            container.reload()
            seen.update(container.attrs["HostConfig"])
            seen["Config"] = container.attrs["Config"]
            seen["Mounts"] = container.attrs["Mounts"]
            super()._forget(container)

    settings = RunSettings(memory="1g", pids_limit=256, shm_size="64m", scratch="256m")
    with Spy(tmp_path / "s", settings) as runner:
        run_team(runner, runner.resolve_tag(test_image("good")), cases4)
    config = seen["Config"]
    assert config["Cmd"] == ["/bin/bash", "-c", "sh extract_feat_LP.sh"]  # what the wrapper execs
    assert config["Entrypoint"][:2] == ["/bin/bash", "-c"] and "kill -KILL -1" in config["Entrypoint"][2]
    assert config["User"] == "" and config["WorkingDir"] == "/app"  # the image's own
    assert not any(e.startswith(("INPUT_DIR=", "OUTPUT_DIR=", "HOME=")) for e in config["Env"])
    assert seen["NetworkMode"] == "none"
    assert seen["CapDrop"] == ["ALL"]
    assert any("no-new-privileges" in o for o in seen["SecurityOpt"])
    assert seen["PidsLimit"] == 256
    assert seen["Memory"] == seen["MemorySwap"] == 1 << 30
    assert seen["ShmSize"] == 64 << 20
    assert seen["CpusetCpus"] and seen["Init"] is True
    modes = {m["Destination"]: m["RW"] for m in seen["Mounts"]}
    if engine.quota:  # a writable image, as the reference gives, capped by the engine's storage
        assert seen["ReadonlyRootfs"] is False and int(seen["StorageOpt"]["size"]) >= 256 << 20
        assert modes == {"/workspace/inputs": False, "/workspace/outputs": True}
    elif engine.overlay:  # read-only image; its working directory, $HOME and temp folders are overlays
        assert seen["ReadonlyRootfs"] is True and not seen.get("Tmpfs")
        scratch = dict.fromkeys(["/app", "/root", "/tmp", "/var/tmp"], True)
        assert modes == {"/workspace/inputs": False, "/workspace/outputs": True, **scratch}
    else:  # read-only image, capped tmpfs scratch where caches go
        assert seen["ReadonlyRootfs"] is True
        assert set(seen["Tmpfs"]) == {"/tmp", "/root"} and "size=268435456" in seen["Tmpfs"]["/tmp"]
    assert config["Labels"]["ctfm.pid"] == str(os.getpid())
    assert float(config["Labels"]["ctfm.deadline"]) > time.time()


def test_gpus_without_nvidia_runtime_is_a_clear_error(
    tmp_path, cases4, test_image, docker_client, no_leftovers
):
    if "nvidia" in docker_client.info().get("Runtimes", {}):
        pytest.skip("this engine has the NVIDIA runtime")
    with pytest.raises(ContainerError, match="NVIDIA runtime"):
        run_tag(tmp_path / "s", test_image("good"), cases4, gpus=("0",))


def test_tarball_with_unusual_tag_is_loaded_untagged_recorded_and_removed(
    tmp_path, cases4, test_image, docker_client, no_leftovers
):
    """The team's tarball names its image `registry.local/acme-sub:v7`, not `acme_lp:latest`: the reference
    runner would not start it, and ctfm says so; ctfm itself runs it by id and leaves no tag behind."""
    image_id = nonce_image(docker_client, test_image("good"))
    teams = tmp_path / "teams"
    save_tarball(docker_client, image_id, teams / "acme_lp.tar.gz", ["registry.local/acme-sub:v7"])
    docker_client.images.remove(image_id)
    said: list[str] = []
    options = ContainerRunOptions(tmp_path / "s", cases4, RunSettings(memory="1g"), tarballs=teams)
    (report,) = run_containers(options, log=said.append)
    assert report.team == "acme" and report.all_ok and report.image_id == image_id
    view = Store(tmp_path / "s").view("acme", "lp", "full")
    assert {view.record(c).image_id for c in view.cases()} == {image_id}
    assert view.record("case_0000").extractor_version == "registry.local/acme-sub:v7"
    assert report.timing_csv.name == "acme_lp_feature_extraction_time.csv"  # the reference's image name
    assert any("the reference runner would not run it" in s and "acme_lp:latest" in s for s in said)
    assert image_id not in {i.id for i in docker_client.images.list(all=True)}  # removed after the run
    assert not docker_client.images.list(name="registry.local/acme-sub")  # the tag never existed


def test_a_tarball_never_moves_a_tag_even_when_the_runner_is_killed_mid_load(
    tmp_path, cases4, test_image, docker_client, no_leftovers, monkeypatch
):
    """`docker load` moves the tags a tarball names onto its image. A team tarball naming the organizer's
    tag must never take it over, at any moment: ctfm loads it untagged. Sampled throughout a run, and
    throughout a load killed with SIGKILL; also: a relative --store works."""
    organizer = docker_client.images.get(test_image("good"))
    organizer.tag("ctfm-victim", "1")
    thief_id = nonce_image(docker_client, test_image("good"))
    teams = tmp_path / "teams"
    save_tarball(docker_client, thief_id, teams / "thief_lp.tar.gz", ["ctfm-victim:1", "thief_lp:latest"])
    docker_client.images.remove(thief_id)
    owners: set[str] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            owners.add(docker_client.images.get("ctfm-victim:1").id)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        monkeypatch.chdir(tmp_path)
        thief, victim = run_containers(
            ContainerRunOptions(Path("s"), cases4, RunSettings(memory="1g"), teams, ("ctfm-victim:1",))
        )
        assert thief.all_ok and victim.all_ok
        assert (thief.image_id, victim.image_id) == (thief_id, organizer.id)
        for team, image_id in (("thief", thief_id), ("ctfm-victim", organizer.id)):
            view = Store(tmp_path / "s").view(team, "lp", "full")
            assert {view.record(c).image_id for c in view.cases()} == {image_id}
        killed = subprocess.Popen(
            [sys.executable, "-m", "ctfm.cli.main", "extract", "--containers", str(teams), "--images",
             str(cases4), "--store", str(tmp_path / "k"), "--memory", "1g"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)  # within the load of a 400 MB image
        killed.kill()
        killed.wait()
    finally:
        stop.set()
        sampler.join()
    assert owners == {organizer.id}
    assert docker_client.images.get("ctfm-victim:1").id == organizer.id
    assert not docker_client.images.list(name="thief_lp")
    subprocess.run(  # the next runner's sweep removes what the killed one loaded (and its folders)
        [sys.executable, "-m", "ctfm.cli.main", "extract", "--image", "ctfm-victim:1", "--images",
         str(cases4), "--store", str(tmp_path / "k"), "--memory", "1g"],
        check=True, capture_output=True,
    )  # fmt: skip
    assert thief_id not in {i.id for i in docker_client.images.list(all=True)}
    docker_client.images.remove("ctfm-victim:1")


def _extract_cmd(tag: str, images: Path, store: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "ctfm.cli.main", "extract", "--image", tag, "--images", str(images),
        "--store", str(store), "--batch-cases", "3", "--memory", "1g", *extra,
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


def _watchdog_of(pid: int) -> int:
    """The watchdog process a runner started (its command line names the runner's pid)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(b"watch_runner" in a for a in argv) and str(pid).encode() in argv:
                return int(entry.name)
    raise AssertionError(f"no watchdog for runner {pid}")


def test_a_container_ends_at_its_deadline_when_runner_and_watchdog_are_killed(
    tmp_path, test_image, docker_client
):
    """SIGKILL the runner and its watchdog together while a container hangs: the container's own deadline
    (its limit plus a grace) ends it anyway, and the next runner's sweep removes it."""
    images = write_cases(tmp_path / "images", 2)
    (images / "case_0000.nii.gz").unlink()  # left: the case the image hangs on
    cmd = _extract_cmd(test_image("hang"), images, tmp_path / "s", "--timeout-per-case", "3")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def running() -> list[str]:  # the team's container (not the runner's short-lived inspection ones)
        found = docker_client.api.containers(filters={"label": ["ctfm.deadline", f"ctfm.pid={proc.pid}"]})
        return [c["Id"] for c in found]

    deadline = time.monotonic() + 60
    while not running() and time.monotonic() < deadline:
        time.sleep(0.1)
    (cid,) = running()
    watchdog = _watchdog_of(proc.pid)
    os.kill(watchdog, signal.SIGKILL)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    container = docker_client.containers.get(cid)
    limit = float(container.labels["ctfm.deadline"])
    assert limit - time.time() < 30  # 3 s limit + grace
    while container.status in ("created", "running") and time.time() < limit + 30:
        time.sleep(0.5)
        container.reload()
    assert container.status == "exited", container.status
    assert container.attrs["State"]["ExitCode"] == 137  # SIGKILLed by its own deadline
    subprocess.run(_extract_cmd(test_image("good"), images, tmp_path / "s"), check=True, capture_output=True)
    assert cid not in ctfm_containers(docker_client)  # swept at the next runner's start, with the dead
    assert not list((tmp_path / "s" / ".ctfm-work").iterdir())  # runner's (mounted) folders


def test_a_sweep_removes_the_volumes_of_runners_that_are_gone(docker_client):
    """A runner killed while the engine copies an image's folders leaves labelled volumes: the next runner's
    sweep removes them, and leaves those of live runners alone."""
    from ctfm.extract.containers.cleanup import sweep
    from ctfm.extract.containers.engine import LABEL_PID, labels

    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    dead = docker_client.volumes.create(
        f"ctfm-test-dead-{os.getpid()}", labels=labels("copy", **{LABEL_PID: str(gone.pid)})
    )
    live = docker_client.volumes.create(f"ctfm-test-live-{os.getpid()}", labels=labels("copy"))
    try:
        sweep(docker_client)
        names = {v.name for v in docker_client.volumes.list()}
        assert dead.name not in names and live.name in names
    finally:
        for volume in (dead, live):
            with contextlib.suppress(Exception):
                volume.remove(force=True)


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


def test_broken_tarball_and_image_without_sh_do_not_stop_the_others(
    tmp_path, cases4, test_image, image_builder, cli, no_leftovers
):
    teams = tmp_path / "teams"
    teams.mkdir()
    (teams / "broken_lp.tar.gz").write_bytes(b"this is not a docker save tarball")
    # `sh` shadowed by a PATH without it: the reference command starts, its `sh extract_feat_LP.sh` cannot
    nosh = image_builder("ctfm-nosh:1", f"FROM {test_image('good')}\nENV PATH=/nosh\n")
    proc = cli(
        "extract", "--containers", teams, "--image", nosh, "--image", test_image("good"),
        "--images", cases4, "--store", tmp_path / "s", "--memory", "1g", check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    flat = " ".join(proc.stdout.split())
    assert "not run broken" in flat and "docker load failed" in flat
    assert "ctfm-nosh case_0000: no output (container exited with code 127)" in flat
    good = Store(tmp_path / "s").view("ctfm-test", "lp", "full")
    assert len(good.cases()) == 4


def test_reference_and_ctfm_give_a_reference_contract_container_equal_outputs(
    tmp_path, test_image, docker_client, no_leftovers
):
    """A container written to the reference contract (fixed paths, MASKS_DIR, a cache beside its code, in
    /tmp and under $HOME): the reference runner's exact command, one case at a time, and ctfm, batched and
    per case, run all 8 cases and store bit-equal arrays. (The reference's `--gpus "device=0"` is left out:
    no GPU here.)"""
    masks = tmp_path / "fg_masks"
    images = write_cases(tmp_path / "images", 8, mask_dir=masks)
    tag = test_image("scratch", SCRATCH_APP="1")
    work = tmp_path / "ref"
    (work / "inputs" / "fg_masks").mkdir(parents=True)
    (work / "outputs").mkdir()
    os.chmod(work / "outputs", 0o777)
    name = f"ctfm-ref-{os.getpid()}"
    for image in sorted(images.glob("*.nii.gz")):
        for src, dest in (
            (image, work / "inputs" / image.name),
            (masks / image.name, work / "inputs" / "fg_masks" / image.name),
        ):
            dest.write_bytes(src.read_bytes())
            os.chmod(dest, 0o644)
        subprocess.run(
            f'docker container run -m 32G --name {name} --rm -e MASKS_DIR=/workspace/inputs/fg_masks '
            f'-v $PWD/inputs/:/workspace/inputs/ -v $PWD/outputs/:/workspace/outputs/ {tag} '
            f'/bin/bash -c "sh extract_feat_LP.sh"',
            shell=True, cwd=work, check=True, capture_output=True,
        )  # fmt: skip
        (work / "inputs" / image.name).unlink()
    for mode in ({"batch_cases": 3}, {"per_case": True}):
        store = tmp_path / f"s{len(mode)}{next(iter(mode))}"
        settings = RunSettings(memory="1g", **mode)
        (report,) = run_containers(
            ContainerRunOptions(store, images, settings, tags=(tag,), masks=masks, view="liver_cyst")
        )
        assert report.all_ok and len(report.outcomes) == 8, report.outcomes
        assert (
            "scratch: wrote /app/cache, /tmp/ctfm-cache, /root/.cache/model; fresh"
            in report.log_path.read_text()
        )
        view = Store(store).view("ctfm-test", "lp", "liver_cyst")
        for case in view.cases():
            with h5py.File(work / "outputs" / f"{case}.h5", "r") as fh:
                np.testing.assert_array_equal(view.read_case(case), fh["y_hat"][()])
        assert len(view.cases()) == 8
