"""`ctfm probe eao` end to end: a store of token maps, labels, outputs, checkpoints, resumability."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli_support import wandb_records, wandb_summary
from ctfm.probe.checkpoint import load_predictor
from ctfm.probe.layout import DiseaseLayout
from ctfm.store import Store
from eao_fixtures import DIM, DISEASE, eval_val, write_token_bench


@pytest.mark.slow
@pytest.mark.usefixtures("wandb_offline")
def test_probe_eao_trains_saves_and_resumes(cli, tmp_path: Path) -> None:
    store, labels = write_token_bench(tmp_path)
    out = tmp_path / "probes"
    args = [
        "probe", "eao", "--store", store, "--model", "tiny", "--labels", labels, "--out", out,
        "--disease", DISEASE, "--head", "attn-pool", "--head", "mean-linear", "--num-layers", "1",
        "--num-heads", "2", "--ffn-mult", "1", "--lrs", "1e-3,1e-2", "--epochs", "4", "--batch-size", "16",
        "--min-epoch", "1", "--warmup-epochs", "1", "--dtype", "float16", "--device", "cpu", "--wandb",
    ]  # fmt: skip
    proc = cli(*args)
    assert "needs about" in proc.stdout + proc.stderr  # memory estimate is said before training
    layout = DiseaseLayout.of(out, "tiny", DISEASE, "eao")
    assert layout.is_done()
    run = layout.run()
    for f in (run.val_report, run.history, run.grid_report, run.progress):
        assert f.is_file(), f
    report = pd.read_csv(run.val_report, index_col=0)
    assert "val_balanced_acc" in report.index
    grid = pd.read_csv(run.grid_report)
    assert sorted(grid["name"]) == ["attn-pool", "attn-pool", "mean-linear", "mean-linear"]
    summary = json.loads(layout.summary.read_text())
    assert summary["task"] == "eao" and summary["store"]["view"] == "full"
    # The wandb summary tells which member each strategy selected: members share a head name, not an lr.
    (run_file,) = run.dir.glob("wandb/offline-run-*/run-*.wandb")
    logged = wandb_summary(wandb_records(run_file))
    for name, sel in summary["runs"][0]["selections"].items():
        hyper = {k: v for k, v in sel.items() if k not in ("head_index", "score", "val_metrics")}
        assert "lr" in hyper and {k: logged[f"{name}/{k}"] for k in hyper} == hyper, name

    # The checkpoint rebuilds its head and reproduces its val balanced accuracy from the store's tokens.
    predictor = load_predictor(run.checkpoint("val_balanced_acc"))
    assert predictor.meta["head"]["kwargs"]["dim"] == DIM
    view = Store(store).view("tiny", "eao", "full")
    table = pd.read_csv(labels / f"{DISEASE}.csv")
    val = table[table["split"] == "val"]
    tokens = [view.read_case(c.removesuffix(".nii.gz")) for c in val["case_id"]]
    pred = predictor.predict_logits(tokens).argmax(1)
    y = val[DISEASE].to_numpy()
    bacc = np.mean([(pred[y == c] == c).mean() for c in (0, 1)])
    assert bacc == pytest.approx(report.loc["val_balanced_acc", "balanced_acc"], abs=0.02)  # float16 cache

    # `ctfm eval` rebuilds the head from the checkpoint and scores the val split the same way.
    scored = eval_val(cli, out, store, labels, tmp_path / "eval")
    assert scored["balanced_acc"] == pytest.approx(bacc, abs=1e-9)
    assert int(scored["n_missing_failed"]) == 0

    again = cli(*args)
    assert "skipped" in again.stdout
    other = list(args)
    other[other.index("--num-heads") + 1], other[other.index("--dtype") + 1] = "1", "float32"
    proc = cli(*other, check=False)  # the head's design is part of what was trained
    assert proc.returncode == 1 and "trained with other --heads, --dtype" in " ".join(proc.stderr.split())


def test_probe_eao_unknown_head_is_one_red_line(cli, tmp_path: Path) -> None:
    proc = cli(
        "probe", "eao", "--store", tmp_path, "--model", "m", "--labels", tmp_path, "--out", tmp_path / "o",
        "--disease", DISEASE, "--head", "transformer", check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--head 'transformer'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--num-heads", "0"], "attn-pool: --num-heads must be an integer of at least 1, not 0"),
        (["--dropout", "1.5"], "attn-pool: --dropout must be in [0, 1), not 1.5"),
        (["--dtype", "float8"], "--dtype 'float8' is not one of float32, float16, bfloat16"),
        (["--eval-batch-size", "0"], "--eval-batch-size must be at least 1, not 0"),
    ],
)
def test_probe_eao_bad_options_are_one_red_line_before_any_work(
    cli, tmp_path: Path, option: list[str], message: str
) -> None:
    store, labels = write_token_bench(tmp_path, n=12)
    out = tmp_path / "probes"
    proc = cli(
        "probe", "eao", "--store", store, "--model", "tiny", "--labels", labels, "--out", out,
        "--disease", DISEASE, *option, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {message}"
    assert not out.exists()  # rejected before any disease was touched


def test_probe_eao_missing_store_folder_is_a_usage_error(cli, tmp_path: Path) -> None:
    _, labels = write_token_bench(tmp_path, n=12)
    proc = cli(
        "probe", "eao", "--store", tmp_path / "nowhere", "--model", "tiny", "--labels", labels,
        "--out", tmp_path / "probes", "--disease", DISEASE, check=False, env={"COLUMNS": "200"},
    )  # fmt: skip
    assert (
        proc.returncode == 2
        and "Invalid value for '--store'" in proc.stderr
        and "does not exist" in proc.stderr
    )
    assert not (tmp_path / "probes").exists()


def test_probe_eao_failed_disease_names_its_labels_file(cli, tmp_path: Path) -> None:
    store, labels = write_token_bench(tmp_path, n=12)
    proc = cli(
        "probe", "eao", "--store", store, "--model", "tiny", "--labels", labels, "--out", tmp_path / "probes",
        "--disease", DISEASE, "--split-column", "fold7", "--epochs", "1", check=False, env={"COLUMNS": "250"},
    )  # fmt: skip
    assert proc.returncode == 1
    error = f"{labels / DISEASE}.csv: no column 'fold7'; it has no fold columns"
    # said when it happens, and again in the list of failures under the table (the table only marks it)
    assert f"{DISEASE}: {error}" in proc.stderr and f"failed {DISEASE}: {error}" in proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith(DISEASE))  # piped: plain rows
    assert row.split() == [DISEASE, "failed"]
