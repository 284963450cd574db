"""Fixtures of the Slurm tests: a reachable controller (skip on a laptop without one, fail under CI=true),
a small synthetic benchmark, and the slowed test extractor on the tasks' path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slurm_support import require_slurm

PLUGIN = Path(__file__).parent / "plugin"


@pytest.fixture(autouse=True)
def _slurm_required() -> None:
    require_slurm()


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
