"""The probe runner through the Python API: layout, seeds aggregated, missing cases, resuming, --force."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from ctfm.core.errors import ConfigError, StoreError
from ctfm.probe.layout import DiseaseLayout, list_diseases
from ctfm.probe.options import ProbeOptions
from ctfm.probe.stage import run_probe
from ctfm.probe.training import TrainConfig
from ctfm.store import Store
from probe_fixtures import MODEL, write_bench


def _config(**kw) -> TrainConfig:
    return TrainConfig(
        **{"epochs": 8, "batch_size": 32, "patience": 3, "min_epoch": 3, "device": "cpu", **kw}
    )


def test_runner_writes_layout_aggregates_seeds_and_resumes(tmp_path, caplog):
    store, labels = write_bench(tmp_path, n=60, dim=6, n_val=16, n_test=4, missing=("synth_0001",))
    options = ProbeOptions.defaults(
        store=store,
        model=MODEL,
        labels=labels,
        out=tmp_path / "out",
        diseases=["fatty_liver", "ascites"],
        train=_config(),
        lrs=[1e-2, 1e-1],
        weight_decays=[1e-4],
        norms=["raw", "std"],
        seeds=[0, 1],
    )
    calls: list[tuple[str, str]] = []
    with caplog.at_level(logging.INFO, logger="ctfm"):
        outcomes = run_probe(options, on_run=lambda d, t: calls.append((d, t))).outcomes
    assert calls == [("fatty_liver", "seed0"), ("fatty_liver", "seed1"), ("ascites", ""), ("ascites", "")]
    assert [o.status for o in outcomes] == [
        "done",
        "failed",
    ]  # ascites has no store view: recorded, not raised
    assert "no ok lp embeddings" in outcomes[1].error
    assert any("synth_0001" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    layout = DiseaseLayout.of(tmp_path / "out", MODEL, "fatty_liver")
    summary = json.loads(layout.summary.read_text())
    assert [r["tag"] for r in summary["runs"]] == ["seed0", "seed1"]
    assert summary["missing"]["count"] == 1 and "synth_0001" in summary["missing"]["cases"]
    agg = summary["aggregate"]["val_auroc"]["auroc"]
    values = [r["selections"]["val_auroc"]["val_metrics"]["auroc"] for r in summary["runs"]]
    assert agg["n"] == 2 and agg["mean"] == pytest.approx(np.mean(values))
    ckpts = [c for c in layout.checkpoints() if c.strategy == "val_balacc_auroc"]
    assert {c.tag for c in ckpts} == {"seed0", "seed1"} and all(c.path.is_file() for c in ckpts)
    assert {c.split_column for c in ckpts} == {"split"}
    report = pd.read_csv(layout.run("seed0").val_report, index_col=0)
    assert list(report.index) == [
        "val_balanced_acc",
        "val_auroc",
        "val_loss",
        "val_balacc_auroc",
        "val_balacc_loss",
    ]
    for col in (
        "acc",
        "f1",
        "auroc",
        "ap",
        "sensitivity",
        "specificity",
        "balanced_acc",
        "loss",
        "head",
        "norm",
        "selected_epoch",
        "checkpoint",
        "lr",
        "weight_decay",
        "train_loss",
    ):
        assert col in report.columns
    history = pd.read_csv(layout.run("seed1").history)
    assert {"epoch", "head", "head_name", "val_loss", "val_balanced_acc", "val_auroc"} <= set(history.columns)
    assert layout.run("seed0").progress.stat().st_size > 1000
    assert list_diseases(tmp_path / "out", MODEL) == ["fatty_liver"]

    (layout.dir / "user_notes.txt").write_text("mine")
    stamp = layout.done.stat().st_mtime_ns
    again = run_probe(options).outcomes
    assert again[0].status == "skipped" and layout.done.stat().st_mtime_ns == stamp
    options.force = True
    options.diseases = ["fatty_liver"]
    assert run_probe(options).outcomes[0].status == "done"
    assert (layout.dir / "user_notes.txt").read_text() == "mine"  # never deletes the user's folder
    # `ctfm run` retrains a disease trained with other options (the config is the truth); the CLI refuses
    options.force, options.lrs = False, [1e-3]
    with pytest.raises(ConfigError, match="trained with other --lrs"):
        run_probe(options, stop_on_error=True)
    options.retrain_changed = True
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ctfm"):
        assert run_probe(options).outcomes[0].status == "done"
    assert any("retraining" in r.getMessage() for r in caplog.records)
    assert json.loads(layout.summary.read_text())["options"]["lrs"] == [1e-3]


def test_a_model_the_store_lacks_is_refused_before_any_disease(tmp_path):
    store, labels = write_bench(tmp_path, n=20, dim=4, n_val=6, n_test=2)
    out = tmp_path / "out"
    options = ProbeOptions.defaults(
        store=store,
        model="typo",
        labels=labels,
        out=out,
        diseases=["fatty_liver", "ascites"],
        train=_config(),
    )
    calls: list[tuple[str, str]] = []
    with pytest.raises(
        StoreError, match=f"no lp embeddings of model 'typo'; it has lp embeddings of {MODEL}"
    ):
        run_probe(options, on_run=lambda d, t: calls.append((d, t)))
    assert calls == [] and not out.exists()
    with pytest.raises(StoreError, match="it has no eao embeddings"):
        Store(store).check_model(MODEL, "eao")


def test_label_row_order_and_test_labels_do_not_change_a_probe(tmp_path):
    """The same cases in another row order train the same heads, and a finished probe stays valid when
    only test labels (which no head saw) change; a train label change still makes it stale."""
    store, labels = write_bench(tmp_path, n=40, dim=4, n_val=10, n_test=6)

    def run(out, **kw):
        options = ProbeOptions.defaults(
            store=store, model=MODEL, labels=labels, out=out, diseases=["fatty_liver"], train=_config(),
            lrs=[1e-2], weight_decays=[1e-4], norms=["std"], **kw,
        )  # fmt: skip
        return run_probe(options).outcomes[0]

    assert run(tmp_path / "a").status == "done"
    csv = labels / "fatty_liver.csv"
    table = pd.read_csv(csv, dtype=str)
    reordered = table.iloc[::-1].copy()
    test_row = reordered.index[reordered["split"] == "test"][0]
    reordered.loc[test_row, "fatty_liver"] = "1" if reordered.loc[test_row, "fatty_liver"] == "0" else "0"
    reordered.to_csv(csv, index=False)
    assert run(tmp_path / "a").status == "skipped"
    assert run(tmp_path / "b").status == "done"
    history = [
        pd.read_csv(DiseaseLayout.of(tmp_path / o, MODEL, "fatty_liver").dir / "history.csv") for o in "ab"
    ]
    pd.testing.assert_frame_equal(history[0], history[1])
    train_row = reordered.index[reordered["split"] == "train"][0]
    reordered.loc[train_row, "fatty_liver"] = "1" if reordered.loc[train_row, "fatty_liver"] == "0" else "0"
    reordered.to_csv(csv, index=False)
    stale = run(tmp_path / "a")
    assert stale.status == "failed" and "labels changed" in stale.error


def test_an_interrupted_forced_retrain_keeps_the_finished_result(tmp_path):
    """--force trains into a staging folder: stopped half-way, the finished probe is still finished and
    whole; completed, it replaces the old runs entirely."""
    store, labels = write_bench(tmp_path, n=40, dim=4, n_val=10, n_test=6)
    out = tmp_path / "out"

    def options(**kw):
        return ProbeOptions.defaults(
            store=store, model=MODEL, labels=labels, out=out, diseases=["fatty_liver"], train=_config(),
            lrs=[1e-2], weight_decays=[1e-4], norms=["std"], **kw,
        )  # fmt: skip

    first = options(seeds=[0, 1])
    run_probe(first)
    layout = DiseaseLayout.of(out, MODEL, "fatty_liver")
    before = {p: p.read_bytes() for p in layout.dir.rglob("*") if p.is_file() and p.name != ".ctfm.lock"}

    def stop_after_first_run(disease: str, tag: str) -> None:
        raise KeyboardInterrupt

    forced = options(seeds=[0, 1], force=True)
    with pytest.raises(KeyboardInterrupt):
        run_probe(forced, on_run=stop_after_first_run)
    assert layout.is_done() and {c.tag for c in layout.checkpoints()} == {"seed0", "seed1"}
    assert all(p.read_bytes() == data for p, data in before.items())

    single = options(seeds=[3], force=True)
    (outcome,) = run_probe(single).outcomes
    assert outcome.status == "done" and layout.is_done() and layout.run_tags() == [""]
    assert {c.tag for c in layout.checkpoints()} == {""}
    names = {p.name for p in layout.dir.iterdir()}
    assert not {"seed0", "seed1", ".retrain"} & names and "checkpoints" in names
