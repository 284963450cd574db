"""Whether a Slurm controller can take jobs here: the slurm tests skip without one on a laptop and fail
under CI=true (`.ci/run` starts one)."""

from __future__ import annotations

import os
import shutil
import subprocess

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
