"""Checkpoints carry what inference needs and rebuild through the head registry; the run layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ctfm.core.errors import ConfigError, DataError
from ctfm.probe.checkpoint import load_predictor, read_checkpoint
from ctfm.probe.data import match_embeddings
from ctfm.probe.heads import HEADS, build_head
from ctfm.probe.layout import DiseaseLayout, RunLayout
from ctfm.probe.linear import build_grid, fit_linear_grid
from ctfm.probe.lp_task import save_linear_checkpoints
from ctfm.probe.training import TrainConfig
from probe_fixtures import MODEL, planted, split_arrays


def _config(**kw) -> TrainConfig:
    return TrainConfig(
        **{"epochs": 8, "batch_size": 32, "patience": 3, "min_epoch": 3, "device": "cpu", **kw}
    )


def test_std_statistics_are_saved_and_reapplied(tmp_path):
    x, y = planted(90, 5, signal=1.0, seed=8)
    x = x * np.arange(1, 6, dtype=np.float32) + 100.0  # far from zero mean / unit std
    x_tr, y_tr, x_va, y_va = split_arrays(x, y, 60)
    fit = fit_linear_grid(x_tr, y_tr, x_va, y_va, build_grid([1e-2, 1e-1], [1e-4], ["std", "raw"]), _config())
    table = pd.DataFrame({"case": [f"c{i}" for i in range(90)], "split": "train", "label": y})
    data = match_embeddings("fatty_liver", table, list(table["case"]), {}, x, {"model": "m", "view": "v"})
    run = RunLayout(tmp_path)
    save_linear_checkpoints(fit, run, data, _config(seed=4))
    for name, sel in fit.selections.items():
        predictor = load_predictor(run.checkpoint(name))
        meta = predictor.meta
        logits = predictor.predict_logits(x_va)
        assert logits.shape == (30, 2)
        np.testing.assert_allclose(logits, sel.val_logits, rtol=1e-4, atol=1e-4)
        assert meta["grid_point"]["norm"] == meta["norm"]["type"]
        assert meta["strategy"] == name and meta["seed"] == 4 and meta["classes"] == [0, 1]
        assert meta["feature_dim"] == 5 and meta["store"]["model"] == "m" and meta["kind"] == "lp"
        assert meta["val_metrics"]["balanced_acc"] == pytest.approx(sel.metrics["balanced_acc"])
        if meta["norm"]["type"] == "std":
            np.testing.assert_allclose(meta["norm"]["mean"], x_tr.mean(0), rtol=1e-5)
            np.testing.assert_allclose(meta["norm"]["std"], x_tr.std(0), rtol=1e-4)
    np.testing.assert_array_equal(predictor.predict_logits(list(x_va)), logits)  # a list of vectors works too
    with pytest.raises(DataError, match="do not fit a probe trained on D=5"):
        predictor.predict_logits(np.zeros((2, 4)))


def test_foreign_files_are_refused(tmp_path):
    bad = tmp_path / "x.pt"
    torch.save({"hello": 1}, bad)
    with pytest.raises(DataError, match="not a ctfm checkpoint"):
        read_checkpoint(bad)
    (tmp_path / "junk.pt").write_text("nope")
    with pytest.raises(DataError, match="not a readable ctfm checkpoint"):
        load_predictor(tmp_path / "junk.pt")


def test_head_registry():
    assert "linear" in HEADS
    assert build_head("linear", in_dim=3, out_dim=2)(torch.zeros(4, 3)).shape == (4, 2)
    with pytest.raises(ConfigError, match="unknown head 'nope'"):
        build_head("nope")


def test_unfinished_disease_has_no_checkpoints(tmp_path):
    layout = DiseaseLayout.of(tmp_path, MODEL, "fatty_liver")
    with pytest.raises(DataError, match="did not finish"):
        layout.checkpoints()
    assert (
        DiseaseLayout.of(tmp_path, MODEL, "fatty_liver", "eao").dir
        == tmp_path / MODEL / "eao" / "fatty_liver"
    )
