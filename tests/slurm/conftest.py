"""Fixtures of the Slurm tests: a reachable controller (skip on a laptop without one, fail under CI=true),
a small synthetic benchmark, and the slowed test extractor on the tasks' path."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PLUGIN = Path(__file__).parent / "plugin"
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


@pytest.fixture(autouse=True)
def _slurm_required() -> None:
    ok, why = slurm_available()
    if ok:
        return
    if IN_CI:
        pytest.fail(f"CI=true but Slurm is not usable: {why} (.ci/run starts it)")
    pytest.skip(f"no Slurm controller ({why})")


@pytest.fixture
def slow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test plug-in on PYTHONPATH (sbatch hands the environment to the tasks)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PLUGIN), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cli_support import run_cli

    root = tmp_path_factory.mktemp("slurm-bench")
    run_cli("data", "synth", "--out", root / "bench", "--cases", "6", "--seed", "0")
    return root / "bench"
