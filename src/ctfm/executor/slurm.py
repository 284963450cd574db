"""Slurm driven directly: one ``sbatch --array`` per job, ``squeue`` and ``sacct`` for the tasks' states.

sbatch is simpler here than a submission library: a task is ``python -m ctfm.cli.main _task JOB i`` and all
state lives in the job folder, so the only things asked of Slurm are to start tasks, to say which are queued
or running, and (where accounting is set up) why one ended.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from ctfm.core.errors import ConfigError, CtfmError
from ctfm.executor.config import ExecutorConfig
from ctfm.executor.jobs import JobDir

QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED"}
_TIMEOUT_S = 60


class SlurmError(CtfmError):
    """sbatch, squeue or sacct refused or failed."""


def _run(args: list[str]) -> str:
    if shutil.which(args[0]) is None:
        raise ConfigError(f"{args[0]} not found: --executor slurm needs the Slurm client commands on PATH")
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{shlex.join(args)}: no answer from Slurm in {_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise SlurmError(f"{shlex.join(args)}: {' '.join((proc.stderr or proc.stdout).split())}")
    return proc.stdout


def batch_script(job: JobDir, cfg: ExecutorConfig, n_tasks: int) -> str:
    """The array job's script: resources as ``#SBATCH`` lines, then one ctfm task per array index."""
    array = f"0-{n_tasks - 1}" + (f"%{cfg.max_parallel}" if cfg.max_parallel else "")
    options = [
        f"--job-name=ctfm-{job.meta()['name']}",
        f"--array={array}",
        f"--output={job.path / 'logs' / '%a.log'}",
        "--open-mode=append",  # a requeued attempt adds to the log of the first
        f"--chdir={Path.cwd()}",
        f"--cpus-per-task={cfg.cpus_per_task}",
    ]
    options += [f"--partition={cfg.partition}"] if cfg.partition else []
    options += [f"--gres=gpu:{cfg.gpus_per_task}"] if cfg.gpus_per_task else []
    options += [f"--mem={cfg.mem}"] if cfg.mem else []
    options += [f"--time={cfg.time}"] if cfg.time else []
    options += list(cfg.sbatch)
    command = shlex.join([sys.executable, "-m", "ctfm.cli.main", "_task", str(job.path)])
    lines = ["#!/bin/bash", *(f"#SBATCH {o}" for o in options), f'exec {command} "$SLURM_ARRAY_TASK_ID"']
    return "\n".join(lines) + "\n"


def submit(job: JobDir, cfg: ExecutorConfig, n_tasks: int) -> str:
    """Submit the array; returns Slurm's job id (recorded in the job folder)."""
    script = job.path / "job.sh"
    script.write_text(batch_script(job, cfg, n_tasks))
    job_id = _run(["sbatch", "--parsable", str(script)]).strip().split(";")[0]
    job.write_meta({**job.meta(), "slurm_id": job_id})
    return job_id


def queue_states(job_id: str) -> dict[int, str]:
    """Array index -> Slurm state of the tasks still queued or running (finished ones are absent)."""
    out = _run(["squeue", "-h", "-r", "-j", job_id, "-o", "%i %T"])
    return _by_index(out, job_id, " ")


def accounting_states(job_id: str) -> dict[int, str]:
    """Array index -> final Slurm state (TIMEOUT, CANCELLED, NODE_FAIL, ...) from sacct; empty where
    accounting is off (``ctfm status`` then relies on the tasks' own reports)."""
    try:
        out = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State"])
    except CtfmError:
        return {}
    return _by_index(out, job_id, "|")


def _by_index(text: str, job_id: str, sep: str) -> dict[int, str]:
    states = {}
    for line in text.splitlines():
        ident, _, state = line.strip().partition(sep)
        base, _, index = ident.partition("_")
        if base == job_id and index.isdigit():
            states[int(index)] = state.split()[0] if state else ""
    return states


def cancel(job_id: str) -> None:
    _run(["scancel", job_id])
