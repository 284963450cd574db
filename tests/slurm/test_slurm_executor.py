"""The slurm executor against a real Slurm controller: the same store and probe results as the local
executor, sacct listing the array tasks, and tasks stopped by scancel or by their time limit finished by a
rerun with nothing lost and nothing done twice. Small on purpose: CI runs it on two cores."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from ctfm.executor.jobs import jobs_root, list_jobs
from ctfm.store import Store
from ctfm.store.shards import ShardView, shard_dirs
from slurm_support import completed_tasks

pytestmark = pytest.mark.slurm
FAST = ("--slurm", "poll_s=0.5")


def _views(store: Path) -> dict[tuple[str, str, str], object]:
    return {v.key: v for v in Store(store).views()}


def _assert_same_store(a: Path, b: Path) -> None:
    va, vb = _views(a), _views(b)
    assert sorted(va) == sorted(vb) and va
    for key, view in va.items():
        other = vb[key]
        assert view.manifest_checksum() == other.manifest_checksum(), key  # records, file checksums included
        assert view.cases("ok") == other.cases("ok") and view.cases("ok")
        for case in view.cases("ok"):
            np.testing.assert_array_equal(view.read_case(case), other.read_case(case))
        assert not (Path(other.dir) / "shards").exists()


def _slurm_id(out: Path) -> str:
    return list_jobs(jobs_root(out))[-1].slurm_id


def _accounting_on() -> bool:
    conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    return "accounting_storage/none" not in conf


def test_extract_and_probe_on_slurm_equal_local(cli, bench: Path, tmp_path: Path) -> None:
    common = ("extract", "--extractor", "hu-stats", "--images", bench / "images", "--task", "lp,eao")
    cli(*common, "--store", tmp_path / "local")
    done = cli(
        *common, "--store", tmp_path / "slurm", "--executor", "slurm", "--slurm", "cases_per_task=2", *FAST
    )
    assert "submitted Slurm job" in done.stdout
    _assert_same_store(tmp_path / "local", tmp_path / "slurm")
    job_id = _slurm_id(tmp_path / "slurm")
    if _accounting_on():  # CI sets up slurmdbd
        assert completed_tasks(job_id, 3) == [f"{job_id}_{i}|COMPLETED" for i in range(3)]

    again = cli(*common, "--store", tmp_path / "slurm", "--executor", "slurm", *FAST)
    assert "nothing to submit" in again.stdout  # a rerun finds everything stored

    from probe_fixtures import MODEL, write_bench

    for disease in ("fatty_liver", "ascites"):
        write_bench(tmp_path / "probe", disease=disease, n=40, n_val=12, n_test=4, seed=len(disease))
    probe = ("probe", "lp", "--store", tmp_path / "probe" / "store", "--model", MODEL, "--labels",
             tmp_path / "probe" / "labels", "--disease", "fatty_liver,ascites", "--epochs", "8", "--lrs",
             "1e-3,1e-2", "--wds", "1e-4", "--norms", "raw,std")  # fmt: skip
    cli(*probe, "--out", tmp_path / "runs-local")
    cli(*probe, "--out", tmp_path / "runs-slurm", "--executor", "slurm", *FAST)
    assert len(list_jobs(jobs_root(tmp_path / "runs-slurm"))[-1].meta()["labels"]) == 2  # a task per disease
    for disease in ("fatty_liver", "ascites"):
        local = tmp_path / "runs-local" / MODEL / disease
        remote = tmp_path / "runs-slurm" / MODEL / disease
        assert (local / "val_report.csv").read_text() == (remote / "val_report.csv").read_text()
        for ckpt in sorted((local / "checkpoints").glob("*.pt")):
            a = torch.load(ckpt, weights_only=False)["state_dict"]
            b = torch.load(remote / "checkpoints" / ckpt.name, weights_only=False)["state_dict"]
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _wait_for_rows(store: Path, rows: int, timeout: float = 300) -> None:
    """Until the job's shard of the lp view holds ``rows`` rows (its task is in the middle of its cases)."""
    view = Store(store).view("slow-hu-stats", "lp", "full")
    deadline = time.time() + timeout
    while time.time() < deadline:
        shards = shard_dirs(view)
        if shards and len(ShardView(view, shards[0].name).own_records()) >= rows:
            return
        time.sleep(0.5)
    raise AssertionError(f"no {rows} rows in a shard of {view} after {timeout} s")


def _wait_gone(job_id: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout
        if not out.strip():
            return
        time.sleep(1)
    raise AssertionError(f"Slurm job {job_id} still queued after {timeout} s")


def _finish_and_check(
    cli, bench: Path, store: Path, monkeypatch: pytest.MonkeyPatch, done_before: int
) -> None:
    """Status says the task failed and where its log is; a rerun submits only what is left, and every case
    ends stored exactly once."""
    status = cli("status", store, check=False)
    assert status.returncode == 1 and "failed" in status.stdout and "stopped by Slurm" in status.stdout
    assert "logs" in status.stdout
    view = Store(store).view("slow-hu-stats", "lp", "full")
    kept = view.cases("ok")
    assert len(kept) >= done_before  # what the task finished was merged
    monkeypatch.setenv("CTFM_SLOW_S", "0")
    cli("extract", "--extractor", "slow-hu-stats", "--images", bench / "images", "--store", store,
        "--executor", "slurm", *FAST)  # fmt: skip
    rerun = list_jobs(jobs_root(store))[-1].meta()["labels"]
    assert sum(int(label.split("(")[1].split()[0]) for label in rerun) == 6 - len(kept)
    assert view.cases("ok") == [f"synth_{i:04d}" for i in range(6)]
    rows = Counter(json.loads(line)["case"] for line in view.manifest_path.read_text().splitlines())
    assert set(rows.values()) == {1}, rows  # nothing was done twice
    assert "done" in cli("status", store).stdout  # the latest job of the view ended well: exit 0


def test_a_cancelled_task_is_finished_by_a_rerun(
    cli, bench: Path, tmp_path: Path, slow_env, monkeypatch
) -> None:
    monkeypatch.setenv("CTFM_SLOW_S", "3")
    store = tmp_path / "store"
    cli("extract", "--extractor", "slow-hu-stats", "--images", bench / "images", "--store", store,
        "--executor", "slurm", "--slurm", "cases_per_task=6", "--detach", *FAST)  # fmt: skip
    job_id = _slurm_id(store)
    _wait_for_rows(store, 2)
    subprocess.run(["scancel", job_id], check=True)
    _wait_gone(job_id)
    _finish_and_check(cli, bench, store, monkeypatch, done_before=2)


@pytest.mark.slow
def test_a_task_over_its_time_limit_is_finished_by_a_rerun(
    cli, bench: Path, tmp_path: Path, slow_env, monkeypatch
) -> None:
    monkeypatch.setenv("CTFM_SLOW_S", "20")  # 6 cases x 20 s: past the 1-minute limit after about 3
    store = tmp_path / "store"
    first = cli("extract", "--extractor", "slow-hu-stats", "--images", bench / "images", "--store", store,
                "--executor", "slurm", "--slurm", "cases_per_task=6", "--slurm", "time=1", *FAST,
                check=False, timeout=900)  # fmt: skip
    assert first.returncode == 1, first.stdout + first.stderr
    assert "stopped by Slurm" in first.stdout
    _finish_and_check(cli, bench, store, monkeypatch, done_before=1)
