"""``ctfm probe lp`` end to end on a small store built with the store API (synthetic embeddings)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cli_support import wandb_logged, wandb_records, wandb_summary
from probe_fixtures import MODEL, write_bench

SMALL = ["--epochs", "6", "--batch-size", "32", "--min-epoch", "2", "--patience", "3", "--device", "cpu"]


@pytest.fixture
def bench(tmp_path):
    store, labels = write_bench(tmp_path, n=60, dim=8, n_val=16, n_test=4, missing=("synth_0005",))
    return tmp_path, store, labels


def _base(store: Path, labels: Path, out: Path) -> list[str]:
    return [
        "probe",
        "lp",
        "--store",
        str(store),
        "--model",
        MODEL,
        "--labels",
        str(labels),
        "--out",
        str(out),
    ]


def test_lp_grid_outputs_and_resume(cli, bench):
    tmp, store, labels = bench
    out = tmp / "probes"
    grid = ["--lrs", "1e-2,1e-1", "--wds", "1e-4", "--norms", "raw,std"]
    # ascites has no embeddings (its `full` view is empty): it fails, is reported, and fatty_liver still runs
    proc = cli(*_base(store, labels, out), "--disease", "fatty_liver,ascites", *SMALL, *grid, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "synth_0005" in proc.stderr and "no ok embedding" in proc.stderr
    assert "fatty_liver" in proc.stdout and "done" in proc.stdout and "failed" in proc.stdout
    assert "ascites" in proc.stderr and "no ok lp embeddings" in proc.stderr
    # piped, each message is one line (rich would fold it at 80 columns, splitting the path)
    failure = [line for line in proc.stderr.splitlines() if line.startswith("ascites: ")]
    assert len(failure) == 1 and len(failure[0]) > 100 and failure[0].endswith("first"), proc.stderr
    disease = out / MODEL / "fatty_liver"
    strategies = ("val_balanced_acc", "val_auroc", "val_loss", "val_balacc_auroc", "val_balacc_loss")
    for name in strategies:
        assert (disease / "checkpoints" / f"{name}.pt").is_file()
    # and one reference-format file per strategy, the folder the reference LP inference takes as --ckpt_dir
    reference = sorted(p.name for p in (disease / "reference_checkpoints").iterdir())
    assert len(reference) == 5 and all(any(f.startswith(f"best_{s}_") for f in reference) for s in strategies)
    for name in ("val_report.csv", "grid_report.csv", "history.csv", "progress.png", "summary.json", "DONE"):
        assert (disease / name).is_file(), name
    report = pd.read_csv(disease / "grid_report.csv")
    assert len(report) == 4 and set(report["norm"]) == {"raw", "std"}
    summary = json.loads((disease / "summary.json").read_text())
    assert summary["runs"][0]["n_train"] == 39 and summary["runs"][0]["n_val"] == 16
    assert summary["missing"]["cases"] == {
        "synth_0005": {"split": "train", "status": "failed: container crashed"}
    }

    again = cli(*_base(store, labels, out), "--disease", "fatty_liver", *SMALL, *grid, "--device", "auto")
    assert "skipped" in again.stdout  # the device does not change what a probe learns
    other = ["--lrs", "1e-3", "--wds", "1e-4", "--norms", "raw,std"]
    proc = cli(
        *_base(store, labels, out), "--disease", "fatty_liver", *SMALL, *other, "--seeds", "3", check=False
    )
    assert proc.returncode == 1 and "trained with other --lrs, --seeds; pass --force" in " ".join(
        proc.stderr.split()
    )
    assert json.loads((disease / "summary.json").read_text()) == summary  # the finished work is untouched
    csv = labels / "fatty_liver.csv"
    original = csv.read_text()
    table = pd.read_csv(csv)
    table.loc[table["split"] == "train", "fatty_liver"] = (
        1 - table.loc[table["split"] == "train", "fatty_liver"]
    )
    table.to_csv(csv, index=False)  # labels edited after training: skipping would keep heads of the old ones
    stale = cli(*_base(store, labels, out), "--disease", "fatty_liver", *SMALL, *grid, check=False)
    assert stale.returncode == 1 and "out of date: its labels changed since it was trained" in " ".join(
        stale.stderr.split()
    )
    csv.write_text(original)
    assert "skipped" in cli(*_base(store, labels, out), "--disease", "fatty_liver", *SMALL, *grid).stdout
    proc = cli(
        *_base(store, labels, out), "--disease", "fatty_liver", *SMALL, *grid, "--seeds", "1,1", check=False
    )
    assert proc.returncode == 2 and "--seeds lists 1 more than once" in proc.stderr
    killed = disease / ".progress.png.x1y2.part.png"  # what a SIGKILLed run was writing
    killed.write_bytes(b"half a figure")
    cli(*_base(store, labels, out), "--disease", "fatty_liver", *SMALL, *grid, "--force")
    assert not killed.exists() and (disease / "progress.png").is_file()

    # eval's `checkpoint` tag names what the reference's does: the reference-format file each strategy scored
    scored = tmp / "eval"
    cli("eval", "--runs", str(out), "--store", str(store), "--labels", str(labels), "--split", "val",
        "--bootstrap", "0", "--out", str(scored))  # fmt: skip
    reference = {p.name for p in (disease / "reference_checkpoints").iterdir()}
    for name in strategies:
        row = pd.read_csv(scored / MODEL / "lp" / "fatty_liver" / name / "val_metrics.csv").iloc[0]
        assert row["checkpoint"].startswith(f"best_{name}_") and row["checkpoint"] in reference


def test_lp_folds_few_shot_with_logreg(cli, bench):
    tmp, store, labels = bench
    out = tmp / "probes"
    cli(
        *_base(store, labels, out),
        "--disease",
        "fatty_liver",
        "--probe",
        "logreg",
        "--cs",
        "0.1,1",
        "--norms",
        "std",
        "--folds",
        "5",
        "--shots",
        "4",
        "--tries",
        "2",
        "--seeds",
        "3",
    )
    summary = json.loads((out / MODEL / "fatty_liver" / "summary.json").read_text())
    runs = summary["runs"]
    assert [r["tag"] for r in runs][:3] == ["fold0_shots4-try0", "fold0_shots4-try1", "fold1_shots4-try0"]
    assert len(runs) == 10 and all(r["n_train"] == 8 and len(r["train_cases"]) == 8 for r in runs)
    assert {r["split_column"] for r in runs} == {f"fold{k}" for k in range(5)}
    assert summary["aggregate"]["val_auroc"]["auroc"]["n"] == 10
    report = pd.read_csv(out / MODEL / "fatty_liver" / "fold3_shots4-try1" / "val_report.csv", index_col=0)
    assert report.loc["val_auroc", "head"].startswith("logreg_C_")


def test_lp_user_mistakes_are_one_line(cli, bench):
    tmp, store, labels = bench
    base = _base(store, labels, tmp / "probes")
    proc = cli(*base, "--disease", "fatty_liver", "--schedule", "step", check=False)
    assert proc.returncode == 2 and "--schedule 'step'" in proc.stderr and "Traceback" not in proc.stderr
    for option, message in (
        (["--betas", "0.9:x"], "--betas expects beta1:beta2 pairs such as 0.9:0.999, got '0.9:x'"),
        (["--lrs", "1e-3,-1e-2"], "--lrs values must be positive, not -0.01"),
        (["--probe", "logreg", "--cs", "0"], "--cs values must be positive, not 0"),
    ):
        proc = cli(*base, "--disease", "fatty_liver", *option, check=False)
        assert (proc.returncode, proc.stderr.strip()) == (2, f"error: {message}"), option
    assert not (tmp / "probes").exists()  # nothing was started


@pytest.mark.slow
@pytest.mark.usefixtures("wandb_offline")
def test_lp_wandb_offline_without_key_logs_the_history_and_selections(cli, bench):
    tmp, store, labels = bench
    out = tmp / "probes"
    grid = ["--lrs", "1e-2,1e-1", "--wds", "1e-4", "--norms", "raw,std"]
    cli(*_base(store, labels, out), "--disease", "fatty_liver", *SMALL, *grid, "--wandb")
    disease = out / MODEL / "fatty_liver"
    (run_file,) = disease.glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name) == ("ctfm", f"{MODEL}-lp-fatty_liver")
    # one history row per epoch: the best value over the heads still training, as history.csv has them
    history = pd.read_csv(disease / "history.csv").groupby("epoch")
    logged = wandb_logged(records, "history")
    assert [row["epoch"] for row in logged] == list(history.groups)
    assert logged[0]["heads_training"] == 4
    for row in logged:
        epoch = history.get_group(row["epoch"])
        assert row["heads_training"] == len(epoch) <= 4
        assert row["val/loss_best"] == pytest.approx(epoch["val_loss"].min())
        assert row["val/balanced_acc_best"] == pytest.approx(epoch["val_balanced_acc"].max())
        assert row["val/auroc_best"] == pytest.approx(epoch["val_auroc"].max())
    # the summary holds every checkpoint strategy's selection, as summary.json does
    summary = wandb_summary(records)
    selections = json.loads((disease / "summary.json").read_text())["runs"][0]["selections"]
    assert len(selections) == 5
    for name, sel in selections.items():
        assert (summary[f"{name}/head"], summary[f"{name}/epoch"]) == (sel["head"], sel["epoch"])
        assert (summary[f"{name}/lr"], summary[f"{name}/norm"]) == (sel["lr"], sel["norm"])
        for metric, value in sel["val_metrics"].items():
            assert summary[f"{name}/{metric}"] == pytest.approx(value), (name, metric)
