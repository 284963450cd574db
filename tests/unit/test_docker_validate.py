"""The container runner's parts that need no Docker engine: the outputs fuzz test, host folders and mounts,
scratch rules, tarball rewriting, the container's settings, timing and small helpers."""

from __future__ import annotations

import gzip
import io
import json
import os
import sys
import tarfile
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from ctfm.core.errors import ConfigError, DataError, InvalidEmbedding
from ctfm.extract.containers.engine import (
    DEADLINE_SH,
    Engine,
    RunSettings,
    container_config,
    parse_bytes,
    split_cpus,
)
from ctfm.extract.containers.folders import (
    RunFolders,
    mounts_under,
    place_input,
    probe_mounts,
    remove_tree,
)
from ctfm.extract.containers.imagefs import passwd_home
from ctfm.extract.containers.memory import cgroup_peak_file
from ctfm.extract.containers.outputs import embedding_problems, present_outputs, stray_entries
from ctfm.extract.containers.runner import ContainerResult, ContainerRunner
from ctfm.extract.containers.scratch import Scratch, writable_folders
from ctfm.extract.containers.tarballs import (
    TeamImage,
    discover_tarballs,
    naming_problems,
    reference_name,
    team_from_tag,
    untagged_stream,
)
from ctfm.extract.containers.teams import _chunks, _run_parallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docker" / "images"))
from fuzz import KINDS, mutate  # the same mutations the fuzz test image applies

from ctfm.store.untrusted import H5Reader

ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def reader():
    with H5Reader(timeout_s=20) as r:
        yield r


def test_fuzzed_outputs_end_as_a_valid_case_or_a_case_failure(tmp_path, reader):
    """Byte flips, truncations, folders (deep, many files), links, FIFOs and stray structures of valid
    outputs: each case is valid or fails with a reason; nothing raises; the folder listing stays bounded;
    the folder is removed whatever it holds."""
    out = tmp_path / "out"
    out.mkdir()
    rng = np.random.default_rng(0)
    n = 220
    for i in range(n):
        with h5py.File(out / f"case_{i:04d}.h5", "w") as fh:
            fh.create_dataset("y_hat", data=rng.random(16, dtype=np.float32))
        mutate(out / f"case_{i:04d}.h5", i)
    cases = [f"case_{i:04d}" for i in range(n)]
    outcomes: dict[str, str] = {}
    for case in cases:
        try:
            reader.read_file(out / f"{case}.h5", "lp", tmp_path / "stage")
            outcomes[case] = "ok"
        except InvalidEmbedding as exc:
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

    assert probe_mounts(tmp_path) == (True, True) and not list(tmp_path.glob(".mount-probe"))
    folders = RunFolders.prepare(tmp_path / "run", [CaseInput("c", images / "c.nii.gz")], True, 1 << 20, 64)
    assert mounts_under(tmp_path / "run") == [folders.outputs]
    assert folders.outputs.stat().st_mode & 0o777 == 0o777
    with pytest.raises(OSError, match="No space left"), (folders.outputs / "big").open("wb") as fh:
        fh.write(b"\1" * (2 << 20))
    with pytest.raises(OSError, match="No space left"):
        for i in range(100):
            (folders.outputs / f"f{i}").write_bytes(b"")
    folders.remove()
    assert not (tmp_path / "run").exists() and not mounts_under(tmp_path)


@pytest.mark.skipif(not ROOT, reason="mounting scratch overlays needs root")
def test_scratch_overlays_show_the_image_files_cap_writes_and_never_touch_the_copy(tmp_path):
    """Each container's view of an image folder: the copy's files with its owner and mode, writes on a capped
    tmpfs (ENOSPC past it), the copy unchanged, a fresh view per container, all gone after removal; host
    paths holding the characters overlay options split on work too."""
    lower = tmp_path / "image, copy:0"
    lower.mkdir()
    (lower / "weights.bin").write_bytes(b"w" * 1000)
    os.chown(lower, 1000, 1000)
    os.chmod(lower, 0o750)
    for _ in range(2):
        folders = RunFolders.prepare(tmp_path / "run", [], False, 0, 0)
        folders.overlay([("/home/app", lower)], 1 << 20)
        ((merged, target),) = folders.binds
        assert target == "/home/app" and (merged / "weights.bin").read_bytes() == b"w" * 1000
        st = merged.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1000, 0o750)
        assert not (merged / "cache").exists()  # fresh: the last container's writes are gone
        (merged / "weights.bin").write_bytes(b"changed")
        with pytest.raises(OSError, match="No space left"), (merged / "cache").open("wb") as fh:
            fh.write(b"\1" * (2 << 20))
        folders.remove()
        assert not (tmp_path / "run").exists() and not mounts_under(tmp_path)
        assert sorted(p.name for p in lower.iterdir()) == ["weights.bin"]
        assert (lower / "weights.bin").read_bytes() == b"w" * 1000


def test_the_folders_a_read_only_image_may_write():
    """Its working directory, $HOME, /tmp and /var/tmp; a folder inside another is covered by it; the root and
    ctfm's own mounts are not overlaid, and a root working directory is said."""
    assert writable_folders("/app", "/root") == (["/app", "/root", "/tmp", "/var/tmp"], [])
    assert writable_folders("/root/app", "/root")[0] == ["/root", "/tmp", "/var/tmp"]
    assert writable_folders("/tmp", "/tmp/")[0] == ["/tmp", "/var/tmp"]
    assert writable_folders("/workspace", "/root")[0] == ["/root", "/tmp", "/var/tmp", "/workspace"]
    assert writable_folders("/workspace/outputs", "/root") == (["/root", "/tmp", "/var/tmp"], [])
    folders, refused = writable_folders("/", "/")
    assert folders == ["/tmp", "/var/tmp"]
    assert refused == [
        "its working directory is /, which cannot be overlaid: it stays read-only",
        "its $HOME is /, which cannot be overlaid: it stays read-only",
    ]


def test_a_container_that_failed_on_its_file_system_is_told_why():
    s = RunSettings(scratch="64m", max_output_bytes=16 << 20)
    scratch = Scratch({"read_only": True}, "/app, /root, /tmp, /var/tmp and /workspace/outputs")
    hint = scratch.hint("OSError: [Errno 30] Read-only file system: '/opt/cache'", s)
    assert hint == (
        "it wrote where it may not (Read-only file system): here it may write /app, /root, /tmp, /var/tmp "
        "and /workspace/outputs"
    )
    full = scratch.hint("OSError: [Errno 28] No space left on device", s)
    assert full == "it ran out of space: its own file system is capped at 64m, its outputs at 16 MiB a case"
    assert scratch.hint("Traceback ... KeyError: 'x'", s) == ""
    result = ContainerResult(name="c", cases=["a"], exit_code=1, hint=full)
    assert result.exit_reason("1g") == f"container exited with code 1; {full}"


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
    mounts = [(m["Target"], m["Source"], m["Type"], m["ReadOnly"]) for m in config["mounts"]]
    assert mounts == [
        ("/workspace/inputs", str(tmp_path / "i"), "bind", True),
        ("/workspace/outputs", str(tmp_path / "o"), "bind", False),
    ]
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
    xfs = Engine("overlay2", "xfs", quota=True, userns=True, mount_outputs=True, overlay=True)
    btrfs = Engine("btrfs", "", quota=True, userns=False, mount_outputs=False)
    assert xfs.storage_size(s, 500) == 1 << 30 and btrfs.storage_size(s, 500) == (1 << 30) + 500
    assert xfs.notes(s) == [] and "btrfs quota rescan" in btrfs.notes(s)[0]
    notes = " ".join(Engine("overlay2", "extfs", False, False, False).notes(s))
    assert "overlay2 on extfs cannot cap" in notes and "1g tmpfs scratch at /tmp and $HOME" in notes
    assert "cannot mount here" in notes and "user-namespace" in notes
    (root,) = Engine("overlay2", "extfs", False, True, True, overlay=True).notes(s)[:1]
    assert "working directory, $HOME, /tmp and /var/tmp are writable" in root and "capped at 1g" in root
    passwd = "root:x:0:0:root:/root:/bin/bash\napp:x:1000:1000::/home/app:/bin/sh\n"
    assert passwd_home(passwd, "") == "/root" and passwd_home(passwd, "app") == "/home/app"
    assert passwd_home(passwd, "1000:1000") == "/home/app" and passwd_home(passwd, "4242") == "/"


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
