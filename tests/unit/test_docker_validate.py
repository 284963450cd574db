"""Output checks of the container runner, and its small helpers (no Docker engine needed)."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from ctfm.errors import ConfigError, DataError
from ctfm.extract.docker import (
    CaseInput,
    ContainerResult,
    ContainerRunner,
    RunSettings,
    _cgroup_peak_file,
    _chunks,
    _split_cpus,
    discover_tarballs,
    parse_bytes,
    place_input,
    team_from_tag,
)
from ctfm.extract.validate import OutputInvalid, check_output, embedding_problems, scan_outputs


def h5(path: Path, data=None, name: str = "y_hat") -> Path:
    with h5py.File(path, "w") as fh:
        fh.create_dataset(name, data=np.arange(4, dtype=np.float32) if data is None else data)
    return path


def test_valid_output_is_staged_privately(tmp_path):
    out = check_output(h5(tmp_path / "c1.h5"), tmp_path / "stage", "lp")
    assert out.case == "c1" and out.path.parent == tmp_path / "stage"
    np.testing.assert_array_equal(out.y_hat, np.arange(4, dtype=np.float32))


@pytest.mark.parametrize(
    ("data", "task", "reason"),
    [
        (np.array([1.0, np.nan], np.float32), "lp", "NaN"),
        (np.arange(4, dtype=np.int32), "lp", "float"),
        (np.zeros((2, 2), np.float32), "lp", "1-D"),
        (np.zeros((2, 2, 2), np.float32), "eao", "4-D"),
    ],
)
def test_bad_arrays_are_rejected(tmp_path, data, task, reason):
    with pytest.raises(OutputInvalid, match=reason):
        check_output(h5(tmp_path / "c.h5", data), tmp_path / "stage", task)


def test_symlink_missing_dataset_junk_and_size(tmp_path):
    secret = h5(tmp_path / "secret.h5")
    (tmp_path / "out").mkdir()
    os.symlink(secret, tmp_path / "out" / "c.h5")
    with pytest.raises(OutputInvalid, match="regular file"):
        check_output(tmp_path / "out" / "c.h5", tmp_path / "stage", "lp")
    with pytest.raises(OutputInvalid, match="no dataset"):
        check_output(h5(tmp_path / "d.h5", name="features"), tmp_path / "stage", "lp")
    (tmp_path / "e.h5").write_bytes(b"not hdf5")
    with pytest.raises(OutputInvalid, match="HDF5"):
        check_output(tmp_path / "e.h5", tmp_path / "stage", "lp")
    with pytest.raises(OutputInvalid, match="over the limit"):
        check_output(h5(tmp_path / "f.h5"), tmp_path / "stage", "lp", max_bytes=100)
    with pytest.raises(OutputInvalid, match="differs"):
        check_output(h5(tmp_path / "g.h5"), tmp_path / "stage", "lp", dim=8)


def test_outputs_that_read_other_files_or_declare_huge_arrays_are_rejected(tmp_path):
    """A container could point y_hat at any file the runner can read (another team's embeddings, a host
    secret) through HDF5 virtual datasets, external storage or external links, or declare a huge array in a
    tiny compressed file: each fails its case, and nothing outside the output is read."""
    victim = h5(tmp_path / "victim.h5", np.full(4, 7.0, np.float32))
    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    out = tmp_path / "out"
    out.mkdir()
    with h5py.File(out / "virtual.h5", "w") as fh:
        layout = h5py.VirtualLayout(shape=(4,), dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(victim), "y_hat", shape=(4,))
        fh.create_virtual_dataset("y_hat", layout)
    with h5py.File(out / "external.h5", "w") as fh:
        fh.create_dataset(
            "y_hat", shape=(4,), dtype=np.float32, external=[(str(tmp_path / "secret.bin"), 0, 16)]
        )
    with h5py.File(out / "linked.h5", "w") as fh:
        fh["y_hat"] = h5py.ExternalLink(str(victim), "y_hat")
    with h5py.File(out / "bomb.h5", "w") as fh:
        fh.create_dataset(
            "y_hat", shape=(1 << 28, 2), dtype=np.float32, chunks=(1 << 20, 2), compression="gzip"
        )
    (out / "folder.h5").mkdir()
    reasons = {
        "virtual": "other files",
        "external": "other files",
        "linked": "is a link",
        "bomb": "over 1073741824",
        "folder": "not a regular file",
    }
    for case, reason in reasons.items():
        with pytest.raises(OutputInvalid, match=reason):
            check_output(out / f"{case}.h5", tmp_path / "stage", "lp")


def test_scan_reports_missing_unexpected_and_one_feature_size(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    h5(out / "a.h5")
    h5(out / "b.h5", np.zeros(5, np.float32))
    (out / "notes.txt").write_text("x")
    h5(out / "other_case.h5")
    scan = scan_outputs(out, ["a", "b", "c"], "lp", tmp_path / "stage")
    assert sorted(scan.valid) == ["a"]
    assert "differs" in scan.invalid["b"]
    assert scan.missing == ["c"]
    assert scan.unexpected == ["notes.txt", "other_case.h5"]


def test_embedding_problems():
    ok = {"a": np.array([1.0, 2.0]), "b": np.array([1.0, 3.0])}
    assert embedding_problems(ok) == []
    assert "constant" in embedding_problems({"a": np.ones(3), "b": np.array([1.0, 2, 3])})[0]
    assert "collapsed" in embedding_problems({"a": np.array([1.0, 2]), "b": np.array([1.0, 2])})[0]


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
    assert [len(c) for c in _chunks(list(range(7)), 3)] == [3, 3, 1]
    assert len(_split_cpus(1)) == 1
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


def test_inputs_are_linked_when_readable_and_copied_readable_when_private(tmp_path):
    src = tmp_path / "a.nii.gz"
    src.write_bytes(b"abc")
    os.chmod(src, 0o644)
    place_input(src, tmp_path / "linked", uid=65534)
    assert (tmp_path / "linked").stat().st_ino == src.stat().st_ino
    os.chmod(src, 0o600)
    place_input(src, tmp_path / "copied", uid=65534 if os.getuid() != 65534 else 1)
    copied = tmp_path / "copied"
    assert copied.stat().st_ino != src.stat().st_ino and copied.read_bytes() == b"abc"
    assert copied.stat().st_mode & 0o004


def test_batched_case_times_are_gaps_between_arrivals():
    result = ContainerResult(name="x", cases=["a", "b", "c"], arrivals={"a": 2.0, "b": 2.5, "c": 3.5})
    assert [result.case_seconds(c) for c in "abc"] == [2.0, 0.5, 1.0]
    alone = ContainerResult(name="y", cases=["a"], wall_s=4.0, arrivals={"a": 2.0})
    assert alone.case_seconds("a") == 4.0  # one case: the container's whole wall time
    assert CaseInput("a", Path("a.nii.gz")).mask is None


def test_chunks_run_concurrently_one_slot_per_gpu():
    import threading

    from ctfm.extract.docker import _run_parallel

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
    import ctfm.extract.docker as docker_module

    runner = ContainerRunner(tmp_path / "store", RunSettings(), client=object())  # no engine call is made
    calls = []
    real = docker_module.sha256_file
    monkeypatch.setattr(docker_module, "sha256_file", lambda p: calls.append(p) or real(p))
    image = tmp_path / "case.nii.gz"
    image.write_bytes(b"abc")
    first = runner.input_sha256(image)
    assert runner.input_sha256(image) == first and len(calls) == 1  # every team and view reuses it
    image.write_bytes(b"abcd")
    assert runner.input_sha256(image) != first and len(calls) == 2  # a replaced file is hashed again


class _Inspected:
    """What `_cgroup_peak_file` reads of a docker SDK container (its id and State.Pid). A stand-in: the
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
    assert _cgroup_peak_file(_Inspected(cid, 42), proc, cgroupfs) is None  # the counter file is not there
    target.parent.mkdir(parents=True)
    target.write_text("123\n")
    assert _cgroup_peak_file(_Inspected(cid, 42), proc, cgroupfs) == target
    # the same pid here belongs to another container's cgroup (a remote engine, another pid namespace)
    assert _cgroup_peak_file(_Inspected("cd" * 32, 42), proc, cgroupfs) is None
    assert _cgroup_peak_file(_Inspected(cid, 0), proc, cgroupfs) is None  # already exited
