"""The container runner's parts that need no Docker engine: output checks (and their fuzz test), host
folders, tarball rewriting, the container's settings, timing and small helpers."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import sys
import tarfile
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from ctfm.errors import ConfigError, DataError
from ctfm.extract.containers.engine import (
    DEADLINE_SH,
    Engine,
    RunSettings,
    _passwd_home,
    container_config,
    parse_bytes,
    split_cpus,
)
from ctfm.extract.containers.folders import (
    RunFolders,
    can_mount,
    mounts_under,
    place_input,
    remove_tree,
)
from ctfm.extract.containers.memory import cgroup_peak_file
from ctfm.extract.containers.outputs import (
    OutputInvalid,
    OutputReader,
    check_output,
    embedding_problems,
    present_outputs,
    stray_entries,
)
from ctfm.extract.containers.runner import ContainerResult, ContainerRunner, _chunks, _run_parallel
from ctfm.extract.containers.tarballs import (
    TeamImage,
    discover_tarballs,
    naming_problems,
    reference_name,
    team_from_tag,
    untagged_stream,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docker" / "images"))
from fuzz import KINDS, mutate  # the same mutations the fuzz test image applies

ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def reader():
    with OutputReader(timeout_s=20) as r:
        yield r


def h5(path: Path, data=None, name: str = "y_hat", **kwargs) -> Path:
    if data is None and "shape" not in kwargs:
        data = np.arange(4, dtype=np.float32)
    with h5py.File(path, "w") as fh:
        fh.create_dataset(name, data=data, **kwargs)
    return path


def check(path: Path, tmp_path: Path, reader, task: str = "lp", max_bytes: int = 1 << 30) -> np.ndarray:
    return check_output(path, tmp_path / "stage", task, reader, max_bytes)


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
    with pytest.raises(OutputInvalid, match=reason):
        check(h5(tmp_path / "c.h5", data), tmp_path, reader, task)


def test_links_special_files_junk_and_size(tmp_path, reader):
    secret = h5(tmp_path / "secret.h5")
    (tmp_path / "out").mkdir()
    os.symlink(secret, tmp_path / "out" / "c.h5")
    with pytest.raises(OutputInvalid, match="regular file"):
        check(tmp_path / "out" / "c.h5", tmp_path, reader)
    os.mkfifo(tmp_path / "out" / "fifo.h5")  # opened without blocking, then refused
    with pytest.raises(OutputInvalid, match="regular file"):
        check(tmp_path / "out" / "fifo.h5", tmp_path, reader)
    with pytest.raises(OutputInvalid, match="no dataset"):
        check(h5(tmp_path / "d.h5", name="features"), tmp_path, reader)
    (tmp_path / "e.h5").write_bytes(b"not hdf5")
    with pytest.raises(OutputInvalid, match="not a readable HDF5 file"):
        check(tmp_path / "e.h5", tmp_path, reader)
    with pytest.raises(OutputInvalid, match="over the limit"):
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
        with pytest.raises(OutputInvalid, match=reason):
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
    with OutputReader(timeout_s=1) as reader:
        with pytest.raises(OutputInvalid, match="took over 1 s; reader stopped"):
            reader.read(fifo, "lp")
        np.testing.assert_array_equal(reader.read(good, "lp"), np.arange(4, dtype=np.float32))
    with OutputReader(timeout_s=30) as reader:
        reader.read(good, "lp")  # started
        killer = threading.Timer(0.5, lambda: os.kill(reader._proc.pid, signal.SIGSEGV))
        killer.start()
        with pytest.raises(OutputInvalid, match=r"crashed the HDF5 reader \(exit code -11\)"):
            reader.read(fifo, "lp")
        killer.join()
        np.testing.assert_array_equal(reader.read(good, "lp"), np.arange(4, dtype=np.float32))


def test_fuzzed_outputs_end_as_a_valid_case_or_a_case_failure(tmp_path, reader):
    """Byte flips, truncations, folders (deep, many files), links, FIFOs and stray structures of valid
    outputs: each case is valid or fails with a reason; nothing raises; the folder listing stays bounded;
    the folder is removed whatever it holds."""
    out = tmp_path / "out"
    out.mkdir()
    rng = np.random.default_rng(0)
    n = 220
    for i in range(n):
        h5(out / f"case_{i:04d}.h5", rng.random(16, dtype=np.float32))
        mutate(out / f"case_{i:04d}.h5", i)
    cases = [f"case_{i:04d}" for i in range(n)]
    outcomes: dict[str, str] = {}
    for case in cases:
        try:
            check(out / f"{case}.h5", tmp_path, reader)
            outcomes[case] = "ok"
        except OutputInvalid as exc:
            outcomes[case] = str(exc)
    assert set(outcomes) == set(cases)
    kinds = {case: KINDS[i % len(KINDS)] for i, case in enumerate(cases)}
    for case, kind in kinds.items():
        if kind in ("folder", "deep", "many", "symlink", "fifo"):
            assert "not a regular file" in outcomes[case], (kind, outcomes[case])
        elif kind == "stray":
            assert outcomes[case] == "ok"
    flipped = [outcomes[c] for c, k in kinds.items() if k in ("flip", "truncate")]
    assert any(o == "ok" for o in flipped) and any(o != "ok" for o in flipped)
    assert any("RuntimeError" in o or "OSError" in o for o in flipped)  # what used to stop the run
    assert len(present_outputs(out, cases)) == n
    stray = stray_entries(out, cases, limit=10)
    assert len(stray) == 11 and stray[-1] == "(and more)"
    assert all(name.isprintable() for name in stray)  # a name with escape codes is printed escaped
    remove_tree(out)
    assert not out.exists()


def test_remove_tree_is_iterative_and_never_follows_links(tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_text("x")
    top = tmp_path / "top"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    for _ in range(1500):  # deeper than Python's recursion limit, a path far longer than PATH_MAX
        os.mkdir("dddddddddd", dir_fd=fd)
        child = os.open("dddddddddd", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.symlink(keep, "link", dir_fd=fd)
    os.close(fd)
    for i in range(300):
        (top / f"f{i}").write_bytes(b"")
    os.mkfifo(top / "fifo")
    os.symlink(keep, top / "keep-link")
    remove_tree(top)
    assert not top.exists() and (keep / "precious").read_text() == "x"
    remove_tree(tmp_path / "absent")  # nothing to do


@pytest.mark.skipif(not ROOT, reason="mounting a size-capped output folder needs root")
def test_output_folder_is_a_size_capped_mount_removed_by_unmounting(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "c.nii.gz").write_bytes(b"x")
    from ctfm.extract.containers.folders import CaseInput

    assert can_mount(tmp_path) and not list(tmp_path.glob(".mount-probe"))
    folders = RunFolders.prepare(tmp_path / "run", [CaseInput("c", images / "c.nii.gz")], True, 1 << 20, 64)
    assert folders.mounted and mounts_under(tmp_path / "run") == [folders.outputs]
    assert folders.outputs.stat().st_mode & 0o777 == 0o777
    with pytest.raises(OSError, match="No space left"), (folders.outputs / "big").open("wb") as fh:
        fh.write(b"\1" * (2 << 20))
    with pytest.raises(OSError, match="No space left"):
        for i in range(100):
            (folders.outputs / f"f{i}").write_bytes(b"")
    folders.remove()
    assert not (tmp_path / "run").exists() and not mounts_under(tmp_path)


def test_inputs_are_linked_when_readable_and_copied_readable_when_private(tmp_path):
    src = tmp_path / "a.nii.gz"
    src.write_bytes(b"abc")
    os.chmod(src, 0o644)
    place_input(src, tmp_path / "linked")
    assert (tmp_path / "linked").stat().st_ino == src.stat().st_ino
    os.chmod(src, 0o600)
    place_input(src, tmp_path / "copied")
    copied = tmp_path / "copied"
    assert copied.stat().st_ino != src.stat().st_ino and copied.read_bytes() == b"abc"
    assert copied.stat().st_mode & 0o777 == 0o644  # as the reference runner copies its inputs


def _save_tarball(path: Path, tags: list[str], gz: bool = True) -> Path:
    """A minimal `docker save`-shaped tarball: one layer, a config, manifest.json, repositories, an OCI
    index naming the image."""
    config = "ab" * 32
    members = {
        "deadbeef/layer.tar": b"layer bytes" * 100,
        f"{config}.json": b"{}",
        "manifest.json": json.dumps([{"Config": f"{config}.json", "RepoTags": tags, "Layers": []}]).encode(),
        "repositories": json.dumps({t.split(":")[0]: {"latest": "deadbeef"} for t in tags}).encode(),
        "index.json": json.dumps(
            {"manifests": [{"annotations": {"io.containerd.image.name": tags[0], "other": "kept"}}]}
        ).encode(),
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(raw.getvalue()) if gz else raw.getvalue())
    return path


@pytest.mark.parametrize("gz", [True, False])
def test_tarballs_reach_the_engine_without_any_tag(tmp_path, gz):
    tarball = _save_tarball(tmp_path / "acme_lp.tar.gz", ["acme_lp:latest", "ctfm-victim:1"], gz)
    seen: dict = {}
    out = b"".join(untagged_stream(tarball, seen, chunk=7))
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())
        index = json.loads(tar.extractfile("index.json").read())
        layer = tar.extractfile("deadbeef/layer.tar").read()
    assert "repositories" not in names and layer == b"layer bytes" * 100
    assert manifest[0]["RepoTags"] == [] and manifest[0]["Config"].endswith(".json")
    assert index["manifests"][0]["annotations"] == {"other": "kept"}
    assert seen["manifest.json"][0]["RepoTags"] == ["acme_lp:latest", "ctfm-victim:1"]  # read on the way
    (tmp_path / "junk_lp.tar.gz").write_bytes(b"not a tarball")
    junk: dict = {}
    with pytest.raises(tarfile.TarError):
        b"".join(untagged_stream(tmp_path / "junk_lp.tar.gz", junk))
    assert isinstance(junk["error"], tarfile.TarError)


def test_the_reference_naming_rule(tmp_path):
    assert reference_name(Path("teams/Acme_LP.tar.gz")) == "acme_lp"
    assert naming_problems(Path("acme_lp.tar.gz"), ["acme_lp:latest"], "lp") == []
    assert naming_problems(Path("acme_lp.tar.gz"), ["docker.io/library/acme_lp:latest"], "lp") == []
    (wrong_tag,) = naming_problems(Path("acme_lp.tar.gz"), ["registry.local/acme:v7"], "lp")
    assert "starts acme_lp:latest" in wrong_tag and "registry.local/acme:v7" in wrong_tag
    assert "docker tag IMAGE acme_lp:latest" in wrong_tag
    task, tag = naming_problems(Path("acme_lp.tar.gz"), [], "eao")
    assert "only *_eao.tar.gz" in task and "(no tag)" in tag
    assert any("not a valid image name" in p for p in naming_problems(Path("ac me_lp.tar.gz"), [], "lp"))


def _image(**kw) -> TeamImage:
    return TeamImage(
        team="acme", name="acme_lp", image_id="sha256:" + "0" * 64, tags=[], size=10, source="x", **kw
    )


def test_the_container_gets_the_reference_command_mounts_and_variables_only(tmp_path):
    s = RunSettings(memory="1g", timeout_per_case=10)
    image = _image(entrypoint=["/opt/nvidia/entrypoint.sh"])
    config = container_config(
        image, s, name="n", in_dir=tmp_path / "i", out_dir=tmp_path / "o", masks=True, cases=2,
        deadline_at=123.9, scratch={"read_only": True}, gpu=None, cpuset="0",
    )  # fmt: skip
    assert config["entrypoint"] == ["/bin/bash", "-c", DEADLINE_SH, "ctfm-deadline", str(s.deadline_s(2))]
    # what the wrapper execs is exactly the reference's argv: the image's entrypoint, then its command
    assert config["command"] == ["/opt/nvidia/entrypoint.sh", "/bin/bash", "-c", "sh extract_feat_LP.sh"]
    assert config["environment"] == {"MASKS_DIR": "/workspace/inputs/fg_masks"}
    assert "user" not in config  # the image's own user, as under the reference
    assert config["volumes"] == {
        str(tmp_path / "i"): {"bind": "/workspace/inputs", "mode": "ro"},
        str(tmp_path / "o"): {"bind": "/workspace/outputs", "mode": "rw"},
    }
    assert config["labels"]["ctfm.deadline"] == "123" and config["init"] is True
    assert (config["network_mode"], config["cap_drop"], config["read_only"]) == ("none", ["ALL"], True)
    plain = container_config(
        _image(), RunSettings(task="eao"), name="n", in_dir=tmp_path, out_dir=tmp_path, masks=False,
        cases=1, deadline_at=0, scratch={}, gpu=None, cpuset="0",
    )  # fmt: skip
    assert plain["environment"] == {} and plain["command"] == ["/bin/bash", "-c", "sh extract_feat_EAO.sh"]


def test_deadlines_scratch_sizes_and_engine_notes():
    s = RunSettings(timeout_per_case=10, scratch="1g")
    assert s.limit_s(3) == 30 and s.deadline_s(3) == 36  # limit + a grace of at least 5 s
    assert RunSettings(timeout_per_case=900).deadline_s(16) == 900 * 16 + 61  # grace at most 60 s
    overlay = Engine("overlay2", "xfs", quota=True, userns=True, mount_outputs=True)
    btrfs = Engine("btrfs", "", quota=True, userns=False, mount_outputs=False)
    assert overlay.storage_size(s, 500) == 1 << 30 and btrfs.storage_size(s, 500) == (1 << 30) + 500
    assert overlay.notes(s) == [] and "btrfs quota rescan" in btrfs.notes(s)[0]
    notes = " ".join(Engine("overlay2", "extfs", False, False, False).notes(s))
    assert "overlay2 on extfs cannot cap" in notes and "1g tmpfs scratch at /tmp and $HOME" in notes
    assert "cannot mount here" in notes and "user-namespace" in notes
    passwd = "root:x:0:0:root:/root:/bin/bash\napp:x:1000:1000::/home/app:/bin/sh\n"
    assert _passwd_home(passwd, "") == "/root" and _passwd_home(passwd, "app") == "/home/app"
    assert _passwd_home(passwd, "1000:1000") == "/home/app" and _passwd_home(passwd, "4242") == "/"


def test_helpers(tmp_path):
    assert team_from_tag("registry.local:5000/ns/acme-sub:v7") == "acme-sub"
    assert team_from_tag("acme") == "acme"
    assert parse_bytes("1g") == 1 << 30 and parse_bytes("512m") == 512 << 20
    assert parse_bytes("1.5G") == 3 << 29 and parse_bytes("2048") == 2048
    for bad in ("lots", "", "0g", "-1m", "g"):
        with pytest.raises(ConfigError, match="is not a size such as 32g or 512m"):
            parse_bytes(bad)
    with pytest.raises(ConfigError, match="--memory 'lots'"):  # refused before any image is loaded
        RunSettings(memory="lots")
    with pytest.raises(ConfigError, match="--scratch 'x'"):
        RunSettings(scratch="x")
    assert [len(c) for c in _chunks(list(range(7)), 3)] == [3, 3, 1]
    assert len(split_cpus(1)) == 1
    (tmp_path / "acme_lp.tar.gz").write_bytes(b"")
    (tmp_path / "zeta_eao.tar.gz").write_bytes(b"")
    (tmp_path / "._acme_lp.tar.gz").write_bytes(b"\x00\x05\x16\x07")  # a macOS resource-fork copy
    assert discover_tarballs(tmp_path, "lp") == {"acme": tmp_path / "acme_lp.tar.gz"}
    with pytest.raises(DataError):
        discover_tarballs(tmp_path / "none", "lp")
    with pytest.raises(ConfigError):
        RunSettings(task="seg")
    with pytest.raises(ConfigError):
        RunSettings(batch_cases=0)
    assert embedding_problems({"a": np.array([1.0, 2.0]), "b": np.array([1.0, 3.0])}) == []
    assert "constant" in embedding_problems({"a": np.ones(3), "b": np.array([1.0, 2, 3])})[0]
    assert "collapsed" in embedding_problems({"a": np.array([1.0, 2]), "b": np.array([1.0, 2])})[0]


def test_a_batch_shares_its_wall_time_and_a_result_names_why_it_ended():
    batch = ContainerResult(name="x", cases=["a", "b", "c", "d"], wall_s=6.0)
    assert batch.share_s == 1.5  # never 0 for a processed case
    assert ContainerResult(name="y", cases=["a"], wall_s=4.0).share_s == 4.0
    assert batch.exit_reason("1g") == "container exited with code None"
    assert ContainerResult(name="z", cases=[], oom_killed=True).exit_reason("1g").endswith("(limit 1g)")


def test_chunks_run_concurrently_one_slot_per_gpu():
    seen: list[tuple[int, str, str]] = []
    lock = threading.Lock()

    def fn(chunk, gpu, cpus):
        with lock:
            seen.append((chunk, gpu, cpus))

    _run_parallel(list(range(6)), ["0", "1"], ["0", "1"], fn)
    assert sorted(c for c, _, _ in seen) == list(range(6))
    assert {(g, c) for _, g, c in seen} <= {("0", "0"), ("1", "1")}

    def boom(chunk, gpu, cpus):
        raise RuntimeError("engine gone")

    with pytest.raises(RuntimeError, match="engine gone"):
        _run_parallel([1, 2], ["0", "1"], ["0", "1"], boom)


def test_inputs_are_hashed_once_per_run_unless_they_change(tmp_path, monkeypatch):
    import ctfm.extract.containers.runner as runner_module

    runner = ContainerRunner(tmp_path / "store", RunSettings(), client=object())  # no engine call is made
    calls = []
    real = runner_module.sha256_file
    monkeypatch.setattr(runner_module, "sha256_file", lambda p: calls.append(p) or real(p))
    image = tmp_path / "case.nii.gz"
    image.write_bytes(b"abc")
    first = runner.input_sha256(image)
    assert runner.input_sha256(image) == first and len(calls) == 1  # every team and view reuses it
    image.write_bytes(b"abcd")
    assert runner.input_sha256(image) != first and len(calls) == 2  # a replaced file is hashed again


class _Inspected:
    """What `cgroup_peak_file` reads of a docker SDK container (its id and State.Pid). A stand-in: the
    real engine on this machine uses cgroup v1 only, so the v2 layout and a foreign pid are built here as
    files; tests/docker reads a real container's v1 peak."""

    def __init__(self, cid: str, pid: int) -> None:
        self.id, self.attrs = cid, {"State": {"Pid": pid}}

    def reload(self) -> None:
        pass


@pytest.mark.parametrize(
    ("line", "peak"),
    [
        ("4:memory:/docker/{cid}", "memory/docker/{cid}/memory.max_usage_in_bytes"),  # v1, cgroupfs driver
        (
            "9:cpu,memory:/system.slice/docker-{cid}.scope",
            "memory/system.slice/docker-{cid}.scope/memory.max_usage_in_bytes",
        ),
        ("0::/system.slice/docker-{cid}.scope", "system.slice/docker-{cid}.scope/memory.peak"),  # v2
    ],
)
def test_cgroup_peak_file_is_found_only_for_this_container(tmp_path: Path, line: str, peak: str) -> None:
    cid = "ab" * 32
    proc, cgroupfs = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "cgroup").write_text(f"7:pids:/docker/{cid}\n{line.format(cid=cid)}\n")
    target = cgroupfs / peak.format(cid=cid)
    assert cgroup_peak_file(_Inspected(cid, 42), proc, cgroupfs) is None  # the counter file is not there
    target.parent.mkdir(parents=True)
    target.write_text("123\n")
    assert cgroup_peak_file(_Inspected(cid, 42), proc, cgroupfs) == target
    # the same pid here belongs to another container's cgroup (a remote engine, another pid namespace)
    assert cgroup_peak_file(_Inspected("cd" * 32, 42), proc, cgroupfs) is None
    assert cgroup_peak_file(_Inspected(cid, 0), proc, cgroupfs) is None  # already exited
