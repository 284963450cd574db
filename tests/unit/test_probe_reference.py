"""The reference trainers' checkpoint files ctfm writes beside its own, checked against the format facts with plain
torch: the file names, the payload keys, and heads rebuilt here from the state dicts predict what ctfm predicts."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctfm.probe.checkpoint import load_predictor, read_checkpoint
from ctfm.probe.data import DiseaseData, match_embeddings
from ctfm.probe.eao import fit_eao, save_eao_checkpoints
from ctfm.probe.eao_grid import HeadSpec
from ctfm.probe.layout import DiseaseLayout, RunLayout
from ctfm.probe.linear import build_grid, fit_linear_grid
from ctfm.probe.lp_task import save_linear_checkpoints
from ctfm.probe.report import val_report
from ctfm.probe.training import TrainConfig
from eao_fixtures import planted_eao_data
from probe_fixtures import planted, split_arrays

SEVEN = ("acc", "f1", "auroc", "ap", "sensitivity", "specificity", "balanced_acc")  # the reference's metrics
# The LP checkpoint name of the format facts: best_<strategy>_<score:.4f>_<head>_ep<N>.pth, heads clf_lr_...
LP_NAME = re.compile(
    r"^best_(?P<strategy>.+?)_(?P<score>-?\d+\.\d{4})_(?P<head>clf_lr_.+)_ep(?P<epoch>\d+)\.pth$"
)
# The EAO one: best_overall_balanced_acc<score:.4f>_<head>_ep<N>.pth, heads head_lr_<lr> without dots
EAO_NAME = re.compile(
    r"^best_overall_balanced_acc(?P<score>\d\.\d{4})_(?P<head>head_lr_[^.]+)_ep(?P<epoch>\d+)\.pth$"
)


def _input_view(x: torch.Tensor, payload: dict) -> torch.Tensor:
    """The input transform of a reference LP checkpoint, from the facts: raw, std (train mean/std), l2, ln."""
    norm = payload["norm"]
    if norm == "raw":
        return x
    if norm == "std":
        return (x - payload["feat_mean"]) / payload["feat_std"]
    if norm == "l2":
        return F.normalize(x, dim=1)
    assert norm == "ln"
    return F.layer_norm(x, (x.shape[1],))


@pytest.mark.parametrize("classes", [2, 3])
def test_lp_reference_checkpoints_rebuild_as_plain_linear_layers_that_predict_what_ctfm_predicts(
    tmp_path: Path, classes: int
) -> None:
    x, y = planted(120, 6, signal=1.0, seed=3, classes=classes)
    x = x * np.arange(1, 7, dtype=np.float32) + 50.0
    x_tr, y_tr, x_va, y_va = split_arrays(x, y, 80)
    grid = build_grid([1e-3, 1e-1], [1e-4, 1e-2], ["raw", "std", "l2", "ln"])
    config = TrainConfig(epochs=10, batch_size=32, patience=3, min_epoch=3, device="cpu")
    fit = fit_linear_grid(x_tr, y_tr, x_va, y_va, grid, config)
    table = pd.DataFrame({"case": [f"c{i}" for i in range(120)], "split": "train", "label": y})
    data = match_embeddings("fatty_liver", table, list(table["case"]), {}, x, {"model": "m"})
    run = RunLayout(tmp_path)
    (run.reference_dir / "best_val_auroc_0.9999_clf_lr_1e_01_ep99.pth").parent.mkdir(parents=True)
    (run.reference_dir / "best_val_auroc_0.9999_clf_lr_1e_01_ep99.pth").write_bytes(b"an older run's file")
    written = save_linear_checkpoints(fit, run, data, config)

    files = sorted(p.name for p in run.reference_dir.iterdir())
    assert len(files) == len(fit.selections)  # one per strategy; the older run's file is gone
    # val_report.csv's `checkpoint` is the reference's: the strategy's reference-format file
    report = val_report(fit, run, written)
    assert sorted(report["checkpoint"]) == [f"reference_checkpoints/{f}" for f in files]
    assert list(report["ctfm_checkpoint"]) == [f"checkpoints/{s}.pt" for s in report.index]
    for name in files:
        m = LP_NAME.match(name)
        assert m, name
        sel = fit.selections[m["strategy"]]
        head = fit.heads[sel.head]
        assert (m["head"], int(m["epoch"])) == (head["name"], sel.epoch)
        assert m["score"] == f"{sel.score:.4f}"
        payload = torch.load(run.reference_dir / name, map_location="cpu", weights_only=True)
        assert payload["head_name"] == head["name"] and payload["norm"] == head["norm"]
        assert payload["betas"] == (0.9, 0.999) and payload["eps"] == 1e-8
        assert set(payload["val_metrics"]) == {
            *SEVEN,
            "loss",
            "val_balacc_auroc",
            "val_balacc_loss",
            "train_loss",
        }
        assert payload["val_metrics"]["balanced_acc"] == pytest.approx(sel.metrics["balanced_acc"])
        assert ("feat_mean" in payload) == (head["norm"] == "std")
        prefix = f"clfs.{head['name']}."
        assert set(payload["state_dict"]) == {prefix + "weight", prefix + "bias"}
        linear = nn.Linear(6, classes)
        linear.load_state_dict({k.removeprefix(prefix): v for k, v in payload["state_dict"].items()})
        with torch.no_grad():
            logits = linear(_input_view(torch.as_tensor(x_va), payload)).numpy()
        np.testing.assert_allclose(logits, sel.val_logits, atol=1e-5)
        ours = load_predictor(run.checkpoint(m["strategy"]))
        np.testing.assert_allclose(logits, ours.predict_logits(x_va), atol=1e-5)
        canonical = read_checkpoint(run.checkpoint(m["strategy"]))["state_dict"]
        assert torch.equal(canonical["linear.weight"], payload["state_dict"][prefix + "weight"])


class _ReferenceAttentionPooling(nn.Module):
    """The reference EAO head written from the benchmark facts with stock torch modules: learnable queries
    cross-attend (nn.MultiheadAttention, sequence-first) to layer-normed tokens, residual + LayerNorm, then a
    GELU feed-forward block, residual + LayerNorm; a final LayerNorm and a linear classifier over the
    concatenated queries."""

    def __init__(self, dim: int, queries: int, classes: int, heads: int, layers: int, ffn_mult: int) -> None:
        super().__init__()
        self.class_query = nn.Parameter(torch.zeros(queries, dim))
        self.layers = nn.ModuleList()
        for _ in range(layers):
            layer = nn.Module()
            layer.mha = nn.MultiheadAttention(dim, heads)
            layer.norm_attn = nn.LayerNorm(dim)
            layer.ffn = nn.Sequential(
                nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(ffn_mult * dim, dim)
            )
            layer.norm_ffn = nn.LayerNorm(dim)
            layer.norm_kv = nn.LayerNorm(dim)
            self.layers.append(layer)
        self.final_norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(queries * dim, classes)

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:  # [B, D, h, w, l]
        tokens = y_hat.flatten(2).permute(2, 0, 1)  # [T, B, D]
        q = self.class_query.unsqueeze(1).expand(-1, y_hat.shape[0], -1)
        for layer in self.layers:
            kv = layer.norm_kv(tokens)
            q = layer.norm_attn(q + layer.mha(q, kv, kv, need_weights=False)[0])
            q = layer.norm_ffn(q + layer.ffn(q))
        return self.classifier(self.final_norm(q).permute(1, 0, 2).flatten(1))


def test_eao_reference_checkpoint_rebuilds_as_the_reference_head_and_predicts_what_ctfm_predicts(
    tmp_path: Path,
) -> None:
    data = planted_eao_data(n=72, dim=8, grids=[(2, 2, 3)])
    spec = HeadSpec("attn-pool", {"num_queries": 2, "num_heads": 4, "num_layers": 2, "ffn_mult": 1})
    config = TrainConfig.from_benchmark("eao", epochs=5, batch_size=16, device="cpu", min_epoch=1)
    disease = DiseaseData("ascites", table=None, x=data.reader.tokens, store_key={"model": "m"})  # type: ignore[arg-type]
    run = DiseaseLayout.of(tmp_path, "m", "ascites", "eao").run()
    other = fit_eao(data, [HeadSpec("mean-linear")], [1e-2], config)
    assert save_eao_checkpoints(other, run, disease, config) == {}
    assert not run.reference_dir.exists()  # the reference inference builds attention pooling heads only
    fit = fit_eao(data, [spec], [1e-3, 1e-2], config)
    sel = fit.selections["val_balanced_acc"]
    written = save_eao_checkpoints(fit, run, disease, config)

    (name,) = [p.name for p in run.reference_dir.iterdir()]
    assert written == {"val_balanced_acc": f"reference_checkpoints/{name}"}
    m = EAO_NAME.match(name)
    assert m, name
    head_name = "head_lr_" + f"{fit.heads[sel.head]['lr']:.0e}".replace("-", "_")
    assert (m["head"], int(m["epoch"]), m["score"]) == (head_name, sel.epoch, f"{sel.score:.4f}")
    payload = torch.load(run.reference_dir / name, map_location="cpu", weights_only=True)
    assert payload["head_name"] == head_name
    assert set(payload["val_metrics"]) == {*SEVEN, "loss"}
    prefix = f"heads.{head_name}."
    assert all(k.startswith(prefix) for k in payload["state_dict"])
    reference = _ReferenceAttentionPooling(8, queries=2, classes=2, heads=4, layers=2, ffn_mult=1).eval()
    reference.load_state_dict(
        {k.removeprefix(prefix): v for k, v in payload["state_dict"].items()}, strict=True
    )
    cases = [data.reader.case(int(r)) for r in data.val_rows]
    maps = torch.stack([torch.as_tensor(c).T.reshape(8, 2, 2, 3) for c in cases])  # y_hat [D, h, w, l]
    with torch.no_grad():
        logits = reference(maps).numpy()
    np.testing.assert_allclose(logits, sel.val_logits, atol=1e-5)
    ctfm = load_predictor(run.checkpoint("val_balanced_acc")).predict_logits(cases)
    np.testing.assert_allclose(logits, ctfm, atol=1e-5)
