"""`ctfm run` end to end on a small synthetic config: interrupted and resumed, it ends where a clean run ends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

SMALL = {
    "output": "out",
    "data": {"synth": {"cases": 24, "seed": 3}},
    "diseases": ["fatty_liver", "ascites"],
    "tasks": ["lp"],
    "extractors": [{"name": "hu-stats"}],
    "probe": {"lp": {"epochs": 12, "lrs": [1.0e-3, 1.0e-2], "weight_decays": [1.0e-4]}},
    "eval": {"split": "test", "bootstrap": 50},
    "leaderboard": {"bootstrap": 50},
}


def _config(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump({**SMALL, **changes}))
    return path


def _ctfm(*args: str) -> list[str]:
    return [sys.executable, "-m", "ctfm.cli.main", *args]


def _results(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    board = pd.read_csv(folder / "out" / "leaderboard" / "lp" / "leaderboard.csv")
    preds = sorted((folder / "out" / "eval" / "lp").rglob("test_per_sample_predictions.csv"))
    assert len(preds) == 2
    return board, pd.concat([pd.read_csv(p) for p in preds])


def _kill_when(proc: subprocess.Popen, ready: Path, timeout: float = 300) -> int:
    """SIGKILL the run as soon as ``ready`` has content; returns how many lines it had."""
    deadline = time.monotonic() + timeout
    while not (ready.is_file() and ready.stat().st_size > 0):
        assert proc.poll() is None, "the run finished before it could be interrupted"
        assert time.monotonic() < deadline, f"{ready} never appeared"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(ready.read_text().splitlines())


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_leaderboard(cli, tmp_path):
    clean = _config(tmp_path / "clean")
    first = " ".join(cli("run", clean).stderr.split())
    n = SMALL["data"]["synth"]["cases"]
    assert (
        f"hu-stats/lp/fatty_liver: {n} extracted, 0 already stored, 0 failed (one pass for 2 task x view"
        in first
    )
    assert f"hu-stats/lp/full: {n} extracted, 0 already stored, 0 failed (in that pass)" in first
    board, preds = _results(clean.parent)
    assert board["model"].tolist() == ["hu-stats"]
    assert (clean.parent / "out" / "leaderboard" / "lp" / "leaderboard.html").is_file()
    reference = clean.parent / "out" / "reference" / "lp" / "hu-stats"  # the reference scorer's --csv_root
    assert sorted(
        p.relative_to(reference).as_posix() for p in reference.rglob("*_per_sample_predictions_*")
    ) == [f"{d}/results/test_per_sample_predictions_val_balanced_acc.csv" for d in sorted(SMALL["diseases"])]
    assert "selection split" not in first  # a test board is not flagged
    assert (
        yaml.safe_load((clean.parent / "out" / "config.resolved.yaml").read_text())["diseases"]
        == SMALL["diseases"]
    )

    broken = _config(tmp_path / "broken")
    # Kill the run mid-extraction (one pass fills both views, case by case), after some cases were stored.
    proc = subprocess.Popen(_ctfm("run", str(broken)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stored = _kill_when(proc, broken.parent / "out" / "store" / "hu-stats" / "lp" / "full" / "manifest.jsonl")
    assert not (broken.parent / "out" / "leaderboard").exists()

    resumed = cli("run", broken)
    log = resumed.stderr
    assert "data: up to date" in log and "masks: up to date" in log
    if stored < SMALL["data"]["synth"]["cases"]:  # killed mid-pass: its finished cases were kept
        assert (
            f"hu-stats/lp/full: {SMALL['data']['synth']['cases'] - stored} extracted, {stored} already stored"
            in " ".join(log.split())
        )
    board2, preds2 = _results(broken.parent)
    pd.testing.assert_frame_equal(board, board2)
    pd.testing.assert_frame_equal(preds.reset_index(drop=True), preds2.reset_index(drop=True))

    again = cli("run", broken).stderr
    assert again.count("up to date") == 7  # data, masks, 2 extractions, probe, eval, leaderboard

    changed = _config(
        tmp_path / "broken", probe={"lp": {"epochs": 6, "lrs": [1.0e-3], "weight_decays": [1.0e-4]}}
    )
    redo = cli("run", changed).stderr
    assert "extract/hu-stats/lp/full: up to date" in redo
    assert "probe/lp/hu-stats (settings changed: redoing)" in redo
    assert "leaderboard/lp (settings changed: redoing)" in redo


def test_bad_config_is_one_clear_message(cli, tmp_path):
    bad = _config(tmp_path, extractors=[{"name": "hu-stats"}, {"name": "nope"}], diseases=["gout"])
    proc = cli("run", bad, check=False)
    assert proc.returncode == 2
    assert "diseases[0]: unknown disease 'gout'" in proc.stderr
    assert "Traceback" not in proc.stderr
    missing = cli("run", tmp_path / "absent.yaml", check=False)
    assert missing.returncode == 2 and "run config not found" in missing.stderr


def test_a_failed_stage_makes_the_run_exit_1(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    data = tmp_path / "not a [/b] benchmark"  # its name is in the error: printed as is, never as markup
    cfg = _config(tmp_path, data={"path": str(data)})
    data.mkdir(parents=True)
    proc = cli("run", cfg, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{data}: not a benchmark folder" in proc.stderr and "stage(s) failed" in proc.stderr


@pytest.mark.slow
def test_run_on_a_benchmark_folder_notices_edited_labels_and_volumes(cli, tmp_path, synth_bench):
    """With ``data: {path}`` the user's files may change between runs: the stages look again and redo only
    what changed, instead of reporting stale results as up to date."""
    bench = tmp_path / "bench"
    shutil.copytree(synth_bench, bench)
    config = _config(tmp_path / "run", data={"path": str(bench)}, diseases=["ascites"])
    cli("run", config)
    summary = tmp_path / "run" / "out" / "probes" / "lp" / "hu-stats" / "ascites" / "summary.json"
    before = json.loads(summary.read_text())
    csv = bench / "labels" / "ascites.csv"
    table = pd.read_csv(csv)
    train = table["split"] == "train"
    table.loc[train, "ascites"] = 1 - table.loc[train, "ascites"]
    table.to_csv(csv, index=False)
    shutil.copy2(bench / "images" / "synth_0001.nii.gz", bench / "images" / "synth_0000.nii.gz")
    log = cli("run", config).stderr
    assert "1 redone (inputs changed)" in " ".join(log.split())
    assert (
        "ascites: its train/val embeddings and its labels changed since it was trained: retraining"
        in " ".join(log.split())
    )
    after = json.loads(summary.read_text())
    assert after["store"]["labels"] != before["store"]["labels"]
    assert after["store"]["manifest_checksum"] != before["store"]["manifest_checksum"]
    again = cli("run", config).stderr
    assert again.count("up to date") == 5  # data, extraction, probe, eval, leaderboard
