"""The executor's parts that need no Slurm: settings from the command line and the run config, the array
script, squeue/sacct parsing, and the array task's entry (its reports, SIGTERM as Slurm sends it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctfm.core.errors import ConfigError
from ctfm.executor.config import ExecutorConfig, executor_from_options
from ctfm.executor.jobs import JobDir, TaskCall
from ctfm.executor.slurm import _by_index, batch_script
from ctfm.executor.task import run_task


def test_slurm_settings_from_the_command_line() -> None:
    cfg = executor_from_options(
        "slurm", ["partition=gpu", "gpus_per_task=1", "time=02:00:00", "mem=32G", "sbatch=--qos=high -A lab"]
    )
    assert (cfg.partition, cfg.gpus_per_task, cfg.time, cfg.mem) == ("gpu", 1, "02:00:00", "32G")
    assert cfg.sbatch == ["--qos=high", "-A", "lab"]
    assert executor_from_options("local", None).kind == "local"
    for bad, message in (
        (["gpus=1"], "KEY=VALUE with KEY one of"),
        (["time=2h"], "not a Slurm time"),
        (["max_parallel=x"], "expected int"),
        (["cases_per_task=0"], "must be >= 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            executor_from_options("slurm", bad)
    with pytest.raises(ConfigError, match="need --executor slurm"):
        executor_from_options("local", ["partition=gpu"])
    with pytest.raises(ConfigError, match="not one of"):
        executor_from_options("kubernetes", None)


def test_run_config_takes_an_executor_section(tmp_path: Path) -> None:
    from ctfm.runconfig import parse_run_config

    raw = {
        "output": "out",
        "data": {"synth": {"cases": 4}},
        "extractors": [{"name": "hu-stats"}],
        "executor": {"kind": "slurm", "gpus_per_task": 1},
    }
    cfg = parse_run_config(raw, tmp_path)
    assert cfg.executor == ExecutorConfig(kind="slurm", gpus_per_task=1)
    raw["executor"] = {"kind": "slurm", "mem": "lots"}
    with pytest.raises(ConfigError, match=r"executor.*not a Slurm size"):
        parse_run_config(raw, tmp_path)


def test_array_script_asks_for_the_resources(tmp_path: Path) -> None:
    job = JobDir.create(tmp_path, "extract-x", [])
    cfg = ExecutorConfig(kind="slurm", partition="gpu", gpus_per_task=1, max_parallel=4, time="1:00:00",
                         sbatch=["--qos=high"])  # fmt: skip
    script = batch_script(job, cfg, 10)
    for line in ("#SBATCH --array=0-9%4", "#SBATCH --gres=gpu:1", "#SBATCH --partition=gpu",
                 "#SBATCH --time=1:00:00", "#SBATCH --qos=high", "#SBATCH --open-mode=append"):  # fmt: skip
        assert line in script.splitlines()
    assert script.rstrip().endswith(f'_task {job.path} "$SLURM_ARRAY_TASK_ID"')
    assert "--gres" not in batch_script(job, ExecutorConfig(kind="slurm"), 2)


def test_a_container_task_takes_the_gpus_slurm_allocated(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--gres=gpu:N`` Slurm names the task's GPUs (host indices) in SLURM_JOB_GPUS: the task's
    containers get those, one container per GPU; without an allocation the settings stay as given."""
    from ctfm.executor.extract import containers_shard_gpus
    from ctfm.extract.containers import RunSettings

    settings = RunSettings(task="lp", memory="2g")
    monkeypatch.delenv("SLURM_JOB_GPUS", raising=False)
    monkeypatch.delenv("SLURM_STEP_GPUS", raising=False)
    assert containers_shard_gpus(settings) == settings
    monkeypatch.setenv("SLURM_JOB_GPUS", "2,5")
    assert containers_shard_gpus(settings).gpus == ("2", "5")


def test_queue_and_accounting_lines_by_array_index() -> None:
    assert _by_index("12_0 RUNNING\n12_3 PENDING\n13_1 RUNNING\n", "12", " ") == {0: "RUNNING", 3: "PENDING"}
    assert _by_index("12_1|CANCELLED by 0\n12_2|TIMEOUT\n", "12", "|") == {1: "CANCELLED", 2: "TIMEOUT"}


def _ok(value: int) -> dict:
    return {"rc": int(value > 1), "reason": "too big" if value > 1 else ""}


def _sleep(seconds: float) -> dict:
    time.sleep(seconds)
    return {"rc": 0}


def test_task_reports_how_it_ended(tmp_path: Path) -> None:
    job = JobDir.create(tmp_path, "t", [])
    job.add_calls(
        [TaskCall("a", _ok, {"value": 1}), TaskCall("b", _ok, {"value": 2}), TaskCall("c", _ok, {})]
    )
    assert [run_task(job.path, i) for i in range(3)] == [0, 1, 2]
    assert [job.report(i)["state"] for i in range(3)] == ["done", "incomplete", "failed"]
    assert job.report(1)["reason"] == "too big"
    assert "TypeError" in job.report(2)["reason"]
    assert job.meta()["labels"] == ["a", "b", "c"]


def test_sigterm_as_slurm_sends_it_is_reported(tmp_path: Path) -> None:
    job = JobDir.create(tmp_path, "t", [])
    job.add_calls([TaskCall("slow", _sleep, {"seconds": 60})])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-m", "ctfm.cli.main", "_task", str(job.path), "0"], env=env)
    deadline = time.time() + 60
    while (job.report(0) or {}).get("state") != "running" and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 2
    report = job.report(0)
    assert report["state"] == "failed" and "stopped by Slurm" in report["reason"]
