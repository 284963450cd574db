"""`ctfm run` with the slurm executor against the local one on a small synthetic benchmark: extraction, probes,
eval and leaderboard come out the same (scripts/compare_outputs.py, numbers to 1e-9), the configs differing only
in where the work ran."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RUN = {
    "data": {"synth": {"cases": 16, "seed": 5}},
    "diseases": ["fatty_liver", "ascites"],  # an ROI view and the whole scan
    "tasks": ["lp"],
    "extractors": [{"name": "hu-stats"}],
    "probe": {"lp": {"epochs": 8, "lrs": [1.0e-2], "weight_decays": [1.0e-4]}},
    "eval": {"split": "test", "bootstrap": 20},
    "leaderboard": {"bootstrap": 20},
}


def _run(folder: Path, **changes: object) -> Path:
    folder.mkdir(parents=True)
    config = folder / "run.yaml"
    config.write_text(yaml.safe_dump({**RUN, "output": "out", **changes}))
    subprocess.run(
        [sys.executable, "-m", "ctfm.cli.main", "run", str(config)], check=True, capture_output=True
    )
    return folder / "out"


def test_run_on_slurm_gives_the_local_run_outputs(tmp_path: Path) -> None:
    local = _run(tmp_path / "local")
    slurm = _run(tmp_path / "slurm", executor={"kind": "slurm", "cases_per_task": 8, "poll_s": 0.5})
    assert (slurm / "leaderboard" / "lp" / "leaderboard.csv").is_file()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare_outputs.py"), str(local), str(slurm), "--most", "50"],
        capture_output=True, text=True,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line and "difference(s) over" not in line]
    assert all(line.startswith("config.resolved.yaml.executor") for line in lines), proc.stdout
    assert lines, "the resolved configs should differ in their executor"
