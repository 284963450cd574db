"""Whether a Slurm controller can take jobs here: the slurm tests skip without one on a laptop and fail
under CI=true (`.ci/run` starts one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def slurm_available() -> tuple[bool, str]:
    if shutil.which("sbatch") is None:
        return False, "no sbatch on PATH"
    proc = subprocess.run(
        ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        return False, " ".join(proc.stderr.split())
    if not any(s.strip().rstrip("*") in ("idle", "mix", "alloc") for s in proc.stdout.split()):
        return False, f"no usable node (sinfo: {proc.stdout.split()})"
    return True, ""


def require_slurm() -> None:
    ok, why = slurm_available()
    if ok:
        return
    if IN_CI:
        pytest.fail(f"CI=true but Slurm is not usable: {why} (.ci/run starts it)")
    pytest.skip(f"no Slurm controller ({why})")


def completed_tasks(job_id: str, n_tasks: int) -> list[str]:
    """sacct's ``<job>_<i>|<state>`` rows of a job's array tasks, sorted, once all ``n_tasks`` are COMPLETED or
    after 20 s (slurmdbd records a task a moment after it ends)."""
    for _ in range(20):
        cmd = ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State"]
        rows = subprocess.run(cmd, capture_output=True, text=True).stdout.split()
        if len(rows) == n_tasks and all(row.endswith("COMPLETED") for row in rows):
            break
        time.sleep(1)
    return sorted(rows)
