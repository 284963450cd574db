"""`ctfm eval` on real checkpoints and a real store: failures counted, manifests checked, files written."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, balanced_accuracy_score, f1_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ctfm.core.metrics import METRICS, REFERENCE_METRICS
from ctfm.evaluate.results import JSON_SUFFIX, PRED_SUFFIX
from eval_fixtures import DISEASE, write_labels, write_probe, write_store

SKIPPED, FAILED = "synth_0011", "synth_0012"  # val cases: one never extracted, one failed extraction


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    labels, truth = write_labels(root)
    runs = root / "probes"
    for model, feature in (("model_a", 0), ("model_b", 1)):
        view = write_store(root, truth, model, skip=(SKIPPED,), fail=(FAILED,))
        write_probe(runs, view, model, feature, labels)
    return {"root": root, "labels": labels, "runs": runs, "store": root / "store", "truth": truth}


@pytest.fixture(scope="module")
def eval_run(bench: dict[str, Path]) -> tuple[Path, subprocess.CompletedProcess]:
    """``ctfm eval`` of both heads, piped as in CI: its output folder and the finished process."""
    from cli_support import run_cli

    out = bench["root"] / "eval"
    proc = run_cli(
        "eval",
        "--runs",
        bench["runs"],
        "--store",
        bench["store"],
        "--labels",
        bench["labels"],
        "--split",
        "val",
        "--bootstrap",
        "200",
        "--seed",
        "1",
        "--reference-layout",
        bench["root"] / "reference",
        "--out",
        out,
        env={"FORCE_COLOR": "", "TTY_COMPATIBLE": ""},  # a pipe, even where CI forces colour
    )
    return out, proc


@pytest.fixture(scope="module")
def evaluated(eval_run: tuple[Path, subprocess.CompletedProcess]) -> Path:
    return eval_run[0]


def _metric_cell(row: pd.Series, metric: str) -> str:
    """A metric as the eval table shows it: value and 95 % interval (binary: every metric is defined)."""
    return f"{row[metric]:.3f} [{row[metric + '_ci_low']:.3f}, {row[metric + '_ci_high']:.3f}]"


def test_piped_eval_table_is_one_complete_line_per_head(eval_run) -> None:
    """Piped (CI logs, ``| grep``), each head is one plain line holding every metric with its interval; a
    table of the split the heads were selected on says so in its title and in a warning."""
    out, proc = eval_run
    summary = pd.read_csv(out / "val_summary.csv")
    lines = proc.stdout.splitlines()
    assert lines[0] == "val: the selection split, optimistic: 2 head(s)"
    assert (
        "warning: val: the selection split, optimistic (the heads were selected on these cases"
        in " ".join(proc.stderr.split())
    )
    assert (summary["split_note"] == "val: the selection split, optimistic").all()
    assert lines[1].split()[:4] == ["model", "disease", "strategy", "failed"]
    for _, head in summary.iterrows():
        (line,) = [line for line in lines if line.startswith(f"{head['model']} ")]
        assert line.split()[:3] == [head["model"], head["disease"], head["strategy"]]
        for metric in METRICS:
            assert _metric_cell(head, metric) in line, (metric, proc.stdout)
    assert len(lines) == 2 + len(summary)
    assert not set("│┃━─…") & set(proc.stdout)


def test_eval_table_on_a_narrow_terminal_cuts_no_number(evaluated: Path, tmp_path: Path, cli) -> None:
    """A 60-column terminal gets the metrics in several tables, each number whole on one line."""
    from rich.cells import cell_len

    preds = evaluated / "model_a" / "lp" / DISEASE / "val_auroc" / "val_per_sample_predictions.csv"
    out = tmp_path / "narrow"
    env = {"COLUMNS": "60", "FORCE_COLOR": "1", "NO_COLOR": "1"}  # rich writes for a 60-column terminal
    proc = cli("eval", "--predictions", preds, "--bootstrap", "50", "--out", out, env=env)
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in proc.stdout.splitlines()]
    assert max(cell_len(line) for line in lines) <= 60 and "…" not in "".join(lines)
    head = pd.read_csv(out / "val_metrics.csv").iloc[0]
    for metric in METRICS:
        assert any(f" {metric} " in line for line in lines), metric  # every header whole
        assert any(_metric_cell(head, metric) in line and f" {head['model']} " in line for line in lines), (
            metric,
            "\n".join(lines),
        )


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_eval_counts_missing_embeddings_as_failures(evaluated: Path, bench: dict) -> None:
    """The reference's files: its per-sample columns (failures last, missing = 1, logits +-10) and its
    metrics with its definitions (checked here with scikit-learn, class by class) and tag columns first."""
    res = evaluated / "model_a" / "lp" / DISEASE / "val_auroc"
    metrics = pd.read_csv(res / "val_metrics.csv")
    assert list(metrics.columns[:16]) == [
        *REFERENCE_METRICS,
        *(
            "strategy",
            "norm",
            "betas",
            "eps",
            "fold",
            "checkpoint",
            "head_name",
            "n_real",
            "n_missing_failed",
        ),
    ]
    assert not {"accuracy", "f1_macro", "average_precision", "failed_cases"} & set(metrics.columns)
    row = metrics.iloc[0]
    assert (row["n_missing_failed"], row["strategy"], row["checkpoint"]) == (2, "val_auroc", "val_auroc.pt")
    preds = pd.read_csv(res / "val_per_sample_predictions.csv")
    assert list(preds.columns) == [
        "filename",
        "label",
        "prediction",
        "missing",
        "logit_class_0",
        "logit_class_1",
        "prob_class_0",
        "prob_class_1",
    ]
    val_cases = [c for c, _ in bench["truth"].items() if int(c[-4:]) >= 10]
    assert len(preds) == len(val_cases) == row["n_real"] + row["n_missing_failed"]  # nothing dropped
    assert sorted(preds["filename"].tail(2)) == [SKIPPED, FAILED]  # case names, failures last
    assert preds["missing"].tolist() == [0] * (len(preds) - 2) + [1, 1]
    for _, fail in preds.tail(2).iterrows():
        assert fail["prediction"] != fail["label"]  # confident prediction of the wrong class
        assert fail[f"prob_class_{fail['prediction']}"] == 1.0
        assert (
            fail[f"logit_class_{fail['prediction']}"] == 10.0
            and fail[f"logit_class_{fail['label']}"] == -10.0
        )
    # The reference's definitions on the written predictions (failures included), scored from the logits.
    y, pred = preds["label"].to_numpy(), preds["prediction"].to_numpy()
    prob = _softmax(preds[["logit_class_0", "logit_class_1"]].to_numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = {
            "acc": np.mean(y == pred),
            "f1": f1_score(y, pred, average="macro"),
            "auroc": np.mean([roc_auc_score(y == c, prob[:, c]) for c in (0, 1)]),
            "ap": np.mean([average_precision_score(y == c, prob[:, c]) for c in (0, 1)]),
            "sensitivity": balanced_accuracy_score(y, pred),  # binary: macro recall
            "specificity": balanced_accuracy_score(y, pred),
            "balanced_acc": balanced_accuracy_score(y, pred),
            "pos_sensitivity": np.mean(pred[y == 1] == 1),
            "pos_specificity": np.mean(pred[y == 0] == 0),
            "pos_ap": average_precision_score(y, prob[:, 1]),
        }
    for key, value in want.items():
        assert row[key] == pytest.approx(value, abs=1e-7), key
    assert row["auroc_ci_low"] <= row["auroc"] <= row["auroc_ci_high"]
    assert row["resampling"] == "stratified" and row["balanced_acc_degenerate"] == 0
    info = json.loads((res / "val_eval.json").read_text())
    assert sorted(info["failed"]) == [SKIPPED, FAILED]
    assert (
        info["meta"]["store"]["model"] == "model_a"
        and info["split_note"] == "val: the selection split, optimistic"
    )
    assert (res / "val_roc.png").stat().st_size > 1000 and (res / "val_pr.png").stat().st_size > 1000
    summary = pd.read_csv(evaluated / "val_summary.csv")
    assert sorted(summary["model"]) == ["model_a", "model_b"]


def test_reference_layout_holds_the_reference_files(evaluated: Path, bench: dict) -> None:
    """--reference-layout: <root>/<model>/<disease>/results/ with the strategy-suffixed names the reference
    inference writes; the per-sample file is ctfm's, the metrics file holds the reference's columns only."""
    results = bench["root"] / "reference" / "model_a" / DISEASE / "results"
    assert sorted(p.name for p in results.iterdir()) == [
        "val_metrics_val_auroc.csv",
        "val_per_sample_predictions_val_auroc.csv",
    ]
    ours = evaluated / "model_a" / "lp" / DISEASE / "val_auroc"
    same = (results / "val_per_sample_predictions_val_auroc.csv").read_text()
    assert same == (ours / "val_per_sample_predictions.csv").read_text()
    ref_metrics = pd.read_csv(results / "val_metrics_val_auroc.csv")
    full = pd.read_csv(ours / "val_metrics.csv")
    assert list(ref_metrics.columns) == list(full.columns[:16])
    pd.testing.assert_frame_equal(ref_metrics, full[ref_metrics.columns])


def test_eval_from_predictions_file_matches(evaluated: Path, bench: dict, tmp_path: Path, cli) -> None:
    res = evaluated / "model_a" / "lp" / DISEASE / "val_auroc"
    preds = pd.read_csv(res / "val_per_sample_predictions.csv")
    trimmed = tmp_path / "val_per_sample_predictions.csv"
    preds[preds["filename"] != "synth_0013"].to_csv(trimmed, index=False)  # one more case missing
    out = tmp_path / "again"
    cli(
        "eval",
        "--predictions",
        trimmed,
        "--labels",
        bench["labels"] / f"{DISEASE}.csv",
        "--split",
        "val",
        "--bootstrap",
        "50",
        "--out",
        out,
    )
    again = pd.read_csv(out / "val_metrics.csv")
    # the two flagged missing, and the one absent
    assert again.loc[0, "n_missing_failed"] == 3 and again.loc[0, "n_real"] + 3 == len(preds)
    with_train = tmp_path / "with_train.csv"
    extra = preds.iloc[:1].assign(filename="synth_0000")  # a train case
    pd.concat([preds, extra]).to_csv(with_train, index=False)
    proc = cli("eval", "--predictions", with_train, "--labels", bench["labels"] / f"{DISEASE}.csv",
               "--split", "val", "--out", tmp_path / "x", check=False)  # fmt: skip
    assert proc.returncode == 2 and "1 predicted case(s) belong to another split than 'val'" in proc.stderr
    full = tmp_path / "full"
    unboot = cli(
        "eval", "--predictions", res / "val_per_sample_predictions.csv", "--bootstrap", "0", "--out", full
    )
    assert "nan" not in unboot.stdout and " 2/24 " in unboot.stdout  # no intervals drawn: none shown
    assert "a case absent from it cannot be counted as a failure; pass --labels" in " ".join(
        unboot.stderr.split()
    )
    first = pd.read_csv(res / "val_metrics.csv")
    for key in METRICS:
        assert pd.read_csv(full / "val_metrics.csv").loc[0, key] == pytest.approx(
            first.loc[0, key], abs=1e-12
        )


def test_eval_predictions_counts_every_labelled_case_of_its_split(
    evaluated: Path, bench: dict, tmp_path: Path, cli
) -> None:
    """Three right rows of a 24-case val split score as 3 of 24, never as a perfect 3 of 3: without --split
    the file's name gives the split; a name that gives none scores every labelled case (train too)."""
    res = evaluated / "model_a" / "lp" / DISEASE / "val_auroc"
    preds = pd.read_csv(res / "val_per_sample_predictions.csv")
    right = preds[(preds["prediction"] == preds["label"]) & (preds["missing"] == 0)].head(3)
    labels = bench["labels"] / f"{DISEASE}.csv"
    named = tmp_path / "team" / "val_per_sample_predictions_val_auroc.csv"  # the reference's name for it
    named.parent.mkdir()
    right.to_csv(named, index=False)
    proc = cli(
        "eval", "--predictions", named, "--labels", labels, "--bootstrap", "0", "--out", tmp_path / "a"
    )
    row = pd.read_csv(tmp_path / "a" / "val_metrics.csv").iloc[0]
    assert (row["n_real"], row["n_missing_failed"], row["split"]) == (3, 21, "val")
    assert row["acc"] == pytest.approx(3 / 24)
    assert "scored split val: 24 case(s), 21 absent or flagged missing" in " ".join(proc.stderr.split())
    unnamed = tmp_path / "team.csv"
    right.to_csv(unnamed, index=False)
    plain = ("--bootstrap", "20", "--resampling", "plain", "--out", tmp_path / "b")
    cli("eval", "--predictions", unnamed, "--labels", labels, *plain)
    row = pd.read_csv(tmp_path / "b" / "all_metrics.csv").iloc[0]
    assert (row["n_real"], row["n_missing_failed"], row["resampling"]) == (
        3,
        len(bench["truth"]) - 3,
        "plain",
    )
    typo = cli(
        "eval", "--predictions", unnamed, "--resampling", "stratify", "--out", tmp_path / "c", check=False
    )
    assert typo.returncode == 2 and "--resampling must be stratified or plain, not 'stratify'" in typo.stderr


def _eval_copy(bench: dict, tmp_path: Path, change) -> tuple[Path, Path]:
    """A copy of the store (changed by ``change(view)``) and of model_a's probe run."""
    from ctfm.store import Store

    store, runs = tmp_path / "store", tmp_path / "runs"
    shutil.copytree(bench["store"], store)
    change(Store(store).view("model_a", "lp", "full"))
    shutil.copytree(bench["runs"] / "model_a", runs / "model_a")
    return store, runs


def _eval_split(
    cli, bench: dict, store: Path, runs: Path, out: Path, split: str = "val", options: tuple = (), **kwargs
):
    """``ctfm eval`` of ``runs`` on ``split`` of ``store`` (no bootstrap, other ``options``), written to ``out``."""
    return cli(
        "eval",
        "--runs",
        runs,
        "--store",
        store,
        "--labels",
        bench["labels"],
        "--split",
        split,
        "--bootstrap",
        "0",
        "--out",
        out,
        *options,
        **kwargs,
    )


def test_eval_accepts_cases_added_after_training(bench: dict, tmp_path: Path, cli) -> None:
    """Extracting a new (e.g. test) case after training leaves the head's train/val embeddings unchanged."""
    store, runs = _eval_copy(bench, tmp_path, lambda v: v.write_case("synth_9999", np.ones(8, np.float32)))
    _eval_split(cli, bench, store, runs, tmp_path / "o")
    assert list((tmp_path / "o").rglob("val_metrics.csv"))


def test_eval_refuses_other_store_manifest(bench: dict, tmp_path: Path, cli) -> None:
    """A train/val embedding re-extracted after training means the head saw other data: refused."""
    store, runs = _eval_copy(bench, tmp_path, lambda v: v.write_case("synth_0001", np.ones(8, np.float32)))
    proc = _eval_split(cli, bench, store, runs, tmp_path / "o", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "manifest" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") == 1  # one line (soft-wrapped by the terminal width at most)
    assert "now lists as train/val (embeddings or splits changed since training)" in " ".join(
        proc.stderr.split()
    )


def test_eval_refuses_train_labels_changed_after_training(bench: dict, tmp_path: Path, cli) -> None:
    """A head scored against train labels it never saw would be reported as if trained on them: refused;
    a test case added after training changes nothing the head saw: scored."""
    labels = shutil.copytree(bench["labels"], tmp_path / "labels")
    csv = labels / f"{DISEASE}.csv"
    table = pd.read_csv(csv, dtype=str)
    train = table.index[table["split"] == "train"][0]
    table.loc[train, DISEASE] = "1" if table.loc[train, DISEASE] == "0" else "0"
    table.to_csv(csv, index=False)
    store, runs = _eval_copy(bench, tmp_path, lambda view: None)
    args = ("eval", "--runs", runs, "--store", store, "--labels", labels)
    proc = cli(*args, "--split", "val", "--bootstrap", "0", "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    err = " ".join(proc.stderr.split())  # undo any wrapping at the terminal width
    assert (
        err.count(f"the train/val rows of {csv} (labels or folds) changed since this head was trained") == 1
    )
    assert not list((tmp_path / "o").rglob("*_metrics.csv"))
    shutil.copy2(bench["labels"] / f"{DISEASE}.csv", csv)
    with csv.open("a") as f:
        f.write("test,synth_0999.nii.gz,1\n")
    cli(*args, "--split", "val", "--bootstrap", "0", "--out", tmp_path / "o")
    assert len(list((tmp_path / "o").rglob("val_metrics.csv"))) == 1


def test_eval_of_a_split_without_cases_names_the_labels_file(bench: dict, tmp_path: Path, cli) -> None:
    """Every head is tried; each gets one error line naming the labels file, and nothing is written."""
    proc = _eval_split(cli, bench, bench["store"], bench["runs"], tmp_path / "o", "test", check=False)
    assert proc.returncode == 1, proc.stderr
    stderr = " ".join(proc.stderr.split())  # undo any wrapping at the terminal width
    assert stderr.count(f"{DISEASE}.csv: no case in split 'test'") == 2
    assert "2 of 2 head(s) could not be evaluated" in stderr
    assert "Traceback" not in proc.stderr and not list((tmp_path / "o").rglob("*_metrics.csv"))


def _retrained_on(checkpoint: Path, labels: Path) -> None:
    """Record ``labels`` (as they are now) as what the head was trained on, as `ctfm probe` would."""
    import torch

    from ctfm.core.labels import read_labels
    from ctfm.probe.data import labels_digest

    payload = torch.load(checkpoint, weights_only=False)
    payload["store"]["labels"] = labels_digest(read_labels(labels / f"{DISEASE}.csv", DISEASE))
    torch.save(payload, checkpoint)


def test_eval_of_val_uses_the_column_the_head_was_trained_on(bench: dict, tmp_path: Path, cli) -> None:
    """A fold head's val cases are its fold's val cases, not the `split` column's (there they were train)."""
    runs = tmp_path / "runs"
    shutil.copytree(bench["runs"] / "model_a", runs / "model_a")
    summary = runs / "model_a" / DISEASE / "summary.json"
    data = json.loads(summary.read_text())
    data["runs"][0]["split_column"] = "fold0"
    summary.write_text(json.dumps(data))
    labels = shutil.copytree(bench["labels"], tmp_path / "labels")
    table = pd.read_csv(labels / f"{DISEASE}.csv")
    table["fold0"] = np.where(table["split"] == "train", "val", "train")  # the roles swapped
    table.to_csv(labels / f"{DISEASE}.csv", index=False)
    _retrained_on(runs / "model_a" / DISEASE / "checkpoints" / "val_auroc.pt", labels)
    cli("eval", "--runs", runs, "--store", bench["store"], "--labels", labels, "--split", "val",
        "--bootstrap", "0", "--out", tmp_path / "o")  # fmt: skip
    preds = pd.read_csv(next((tmp_path / "o").rglob("val_per_sample_predictions.csv")))
    want = table.loc[table["fold0"] == "val", "case_id"].str.removesuffix(".nii.gz")
    assert sorted(preds["filename"]) == sorted(want)


def test_a_second_eval_removes_its_stale_results_and_reports_broken_runs(
    bench: dict, tmp_path: Path, cli
) -> None:
    """Results of heads the runs no longer hold are removed (a leaderboard would rank them); another model's
    results in the same folder stay. A missing checkpoint or unreadable summary is one error line each."""
    import torch

    runs, out = tmp_path / "runs", tmp_path / "o"
    shutil.copytree(bench["runs"], runs)
    disease_a = runs / "model_a" / DISEASE
    payload = torch.load(disease_a / "checkpoints" / "val_auroc.pt", weights_only=False)
    torch.save({**payload, "strategy": "val_loss"}, disease_a / "checkpoints" / "val_loss.pt")
    summary = json.loads((disease_a / "summary.json").read_text())
    summary["runs"][0]["selections"]["val_loss"] = {}
    (disease_a / "summary.json").write_text(json.dumps(summary))

    def kept():
        return sorted(
            p.parent.relative_to(out).as_posix() for p in out.rglob("val_per_sample_predictions.csv")
        )

    _eval_split(cli, bench, bench["store"], runs, out)
    every = [
        f"model_a/lp/{DISEASE}/val_auroc",
        f"model_a/lp/{DISEASE}/val_loss",
        f"model_b/lp/{DISEASE}/val_auroc",
    ]
    assert kept() == every
    proc = _eval_split(
        cli, bench, bench["store"], runs, out, options=("--strategy", "val_auroc")
    )  # a filter drops nothing
    assert kept() == every and "removed" not in proc.stderr
    summary["runs"][0]["selections"] = {"val_loss": {}}  # the probe was rerun with one strategy
    (disease_a / "summary.json").write_text(json.dumps(summary))
    shutil.move(runs / "model_b", tmp_path / "model_b")
    proc = _eval_split(cli, bench, bench["store"], runs, out)
    assert "removed the earlier val result" in proc.stderr
    assert kept() == [f"model_a/lp/{DISEASE}/val_loss", f"model_b/lp/{DISEASE}/val_auroc"]

    shutil.move(tmp_path / "model_b", runs / "model_b")
    (runs / "model_b" / DISEASE / "summary.json").write_text("{")
    (disease_a / "checkpoints" / "val_loss.pt").unlink()
    shutil.copytree(bench["runs"] / "model_a", runs / "model_c")
    proc = _eval_split(cli, bench, bench["store"], runs, tmp_path / "o2", check=False)
    stderr = " ".join(proc.stderr.split())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        "checkpoint missing:" in stderr and "val_loss.pt" in stderr and "summary.json: unreadable" in stderr
    )
    assert "2 disease(s) of the runs could not be read" in stderr
    assert len(list((tmp_path / "o2").rglob("val_metrics.csv"))) == 1  # model_c's head is still scored


def test_leaderboard_from_eval_outputs(evaluated: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "lb"
    proc = cli("leaderboard", "--results", evaluated, "--bootstrap", "100", "--seed", "3", "--out", out)
    assert "(val: the selection split, optimistic): 2 model(s) x 1 disease(s)" in proc.stdout
    assert "warning: val: the selection split, optimistic (the heads were selected" in " ".join(
        proc.stderr.split()
    )
    table = pd.read_csv(out / "leaderboard.csv")
    assert table["model"].tolist() == ["model_a", "model_b"]
    assert table.loc[0, "rank"] == 1.0
    assert {"rank_ci_low", "rank_ci_high", "win_share", "rank_aggregate_then_rank"} <= set(table.columns)
    html = (out / "leaderboard.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    assert (out / "leaderboard.md").read_text().count("model_") >= 2
    assert "has no result" not in html
    # a team that sent predictions is ranked beside checkpoint-scored models once its task is given
    mixed = Path(shutil.copytree(evaluated, tmp_path / "mixed"))
    sent = next(p for p in sorted(mixed.rglob(f"val{PRED_SUFFIX}")) if "model_a" in p.parts)
    scored = ("eval", "--predictions", sent, "--model", "team_x", "--bootstrap", "0")
    cli(*scored, "--out", mixed / "team_x_untasked")
    board = (
        "leaderboard",
        "--results",
        mixed,
        "--split",
        "val",
        "--bootstrap",
        "0",
        "--out",
        tmp_path / "lb3",
    )
    untasked = cli(*board, "--task", "lp", check=False)
    assert (
        untasked.returncode == 2 and "rescore it with `ctfm eval --predictions ... --task" in untasked.stderr
    )
    shutil.rmtree(mixed / "team_x_untasked")
    cli(*scored, "--task", "lp", "--out", mixed / "team_x")
    ranked = cli(*board, "--task", "lp", "--strategy", "val_auroc,predictions")
    assert "team_x [predictions]" in ranked.stdout and "model_a [val_auroc]" in ranked.stdout
    assert "nan" not in ranked.stdout  # --bootstrap 0: no rank intervals, shown as "-"
    typo = cli(
        "leaderboard", "--results", evaluated, "--strategy", "val_loss,val_bacc", "--out", out, check=False
    )
    assert (
        typo.returncode == 2 and "unknown --strategy val_bacc; choose from val_balanced_acc," in typo.stderr
    )

    partial = tmp_path / "partial"  # model_a has a second disease; model_b's eval stopped before it
    shutil.copytree(evaluated, partial)
    src = next(p for p in sorted(partial.rglob(f"*{PRED_SUFFIX}")) if "model_a" in p.parts)
    disease = "gout"
    second = Path(shutil.copytree(src.parent, partial / "model_a" / "lp" / disease / src.parent.name))
    meta_path = second / src.name.replace(PRED_SUFFIX, JSON_SUFFIX)
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "disease": disease}))
    proc = cli("leaderboard", "--results", partial, "--bootstrap", "0", "--out", tmp_path / "lb2")
    line = f"model_b has no result for {disease}: ranked last there"
    assert f"warning: {line}" in " ".join(proc.stderr.split())
    for name in ("leaderboard.md", "leaderboard.html"):
        assert line in (tmp_path / "lb2" / name).read_text(), name
    assert json.loads((tmp_path / "lb2" / "leaderboard.json").read_text())["missing"] == {
        "model_b": [disease]
    }


@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
def test_eval_predictions_multiclass_and_multilabel(kind: str, tmp_path: Path) -> None:
    """Per-sample files of multiclass and multilabel targets are scored like sklearn scores them."""
    from sklearn.metrics import average_precision_score, f1_score

    from ctfm.evaluate.predictions import evaluate_predictions

    rng = np.random.default_rng(4)
    n = 40
    cols: dict[str, object] = {"filename": [f"c{i}.nii.gz" for i in range(n)]}
    if kind == "multiclass":
        y = np.r_[0, 1, 2, rng.integers(0, 3, n - 3)]
        prob = rng.dirichlet(np.ones(3), n)
        cols |= {"label": y, "pred": prob.argmax(1)}
        want_f1 = f1_score(y, prob.argmax(1), average="macro")
        want_ap = average_precision_score(y, prob, average="macro")
    else:
        y = rng.integers(0, 2, (n, 3))
        y[0], y[1] = 0, 1
        prob = rng.random((n, 3))
        cols |= {f"label_{j}": y[:, j] for j in range(3)}
        want_f1 = f1_score(y, (prob >= 0.5).astype(int), average="macro")
        want_ap = average_precision_score(y, prob, average="macro")
    cols |= {f"prob_class_{j}": prob[:, j] for j in range(3)}
    csv = tmp_path / "val_per_sample_predictions.csv"
    pd.DataFrame(cols).to_csv(csv, index=False)
    result = evaluate_predictions(csv, tmp_path / "out", n_boot=100, seed=0)
    assert result.metrics["f1"].value == pytest.approx(want_f1, abs=1e-9)
    assert result.metrics["ap"].value == pytest.approx(want_ap, abs=1e-9)
    assert (tmp_path / "out" / "val_roc.png").is_file() and (tmp_path / "out" / "val_metrics.csv").is_file()


def _eval_eao(root: Path, cli) -> Path:
    """A task-2 head of model ``tok`` trained on token maps, evaluated on val into ``root/eval``."""
    labels, truth = write_labels(root, n_train=4, n_val=12)
    view = write_store(root, truth, "tok", skip=(SKIPPED,), task="eao")
    write_probe(root / "probes", view, "tok", 0, labels, task="eao")
    out = root / "eval"
    cli(
        "eval", "--runs", root / "probes", "--store", root / "store", "--labels", labels, "--split", "val",
        "--bootstrap", "50", "--out", out,
    )  # fmt: skip
    return out


def test_eval_eao_checkpoint(tmp_path: Path, cli) -> None:
    """Task 2 heads are rebuilt from their checkpoints and read token maps from the packed eao view."""
    out = _eval_eao(tmp_path, cli)
    metrics = pd.read_csv(out / "tok" / "eao" / DISEASE / "val_auroc" / "val_metrics.csv")
    assert metrics.loc[0, "n_missing_failed"] == 1 and metrics.loc[0, "n_real"] == 11
    assert metrics.loc[0, "balanced_acc"] > 0.8  # feature 0 separates the classes in every token


def test_leaderboard_ranks_one_task_at_a_time(evaluated: Path, tmp_path: Path, cli) -> None:
    results = tmp_path / "results"
    shutil.copytree(evaluated, results)  # task 1 results of model_a and model_b
    shutil.copytree(_eval_eao(tmp_path / "eao", cli), results, dirs_exist_ok=True)  # task 2 of tok
    board = tmp_path / "lb"
    mixed = cli("leaderboard", "--results", results, "--bootstrap", "0", "--out", board, check=False)
    assert (mixed.returncode, mixed.stderr.strip()) == (
        2, f"error: {results}: results for tasks ['eao', 'lp']; pick one with --task"
    )  # fmt: skip
    for task, models in (("lp", ["model_a", "model_b"]), ("eao", ["tok"])):
        cli("leaderboard", "--results", results, "--task", task, "--bootstrap", "0", "--out", board / task)
        assert sorted(pd.read_csv(board / task / "leaderboard.csv")["model"]) == models
    none = cli(
        "leaderboard", "--results", results, "--task", "lp", "--split", "test", "--out", board, check=False
    )
    assert (none.returncode, none.stderr.strip()) == (
        2,
        f"error: {results}: no result has split test and task lp",
    )


def test_run_eval_tells_its_progress_once_per_head(bench: dict, tmp_path: Path) -> None:
    from ctfm.evaluate.stage import EvalOptions, run_eval
    from progress_support import Recorder

    seen = Recorder()
    options = EvalOptions(
        bench["runs"], bench["store"], bench["labels"], tmp_path / "out", split="val", bootstrap=0
    )
    run = run_eval(options, progress=seen)
    heads = len(run.results) + len(run.errors)
    assert heads == run.heads > 0
    assert seen.events == [("start", "eval val", heads), *[("advance", 1)] * heads, ("done",)]
