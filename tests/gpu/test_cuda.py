"""The CUDA code paths against the CPU ones: EAO and linear-probe training, masking, checkpoints, extraction.

These need a CUDA GPU and skip without one (CI has none; the project's GPU machine runs them when lent:
``pytest -m gpu``). CPU and GPU sum in different orders, so results agree to float tolerances, not bits; on
one device the same inputs give the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctfm.extract.extractors.cnn3d import Cnn3dExtractor
from ctfm.probe.checkpoint import load_predictor
from ctfm.probe.data import DiseaseData
from ctfm.probe.eao import fit_eao, save_eao_checkpoints
from ctfm.probe.eao_grid import HeadSpec
from ctfm.probe.eao_heads import EAO_HEADS
from ctfm.probe.heads import build_head
from ctfm.probe.layout import DiseaseLayout
from ctfm.probe.linear import build_grid, fit_linear_grid
from ctfm.probe.training import TrainConfig
from eao_fixtures import DISEASE, GRIDS, eval_val, planted_eao_data, write_token_bench
from probe_fixtures import planted, split_arrays

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (CI has none)"),
]

SPECS = [
    HeadSpec("attn-pool", {"num_layers": 2, "num_heads": 2, "ffn_mult": 1.0}),
    HeadSpec("mean-linear"),
    HeadSpec("abmil", {"hidden": 16}),
    HeadSpec("mlp", {"hidden": 16}),
]
LOSSES = ["train_loss", "val_loss"]


def _eao_config(device: str, **kw: object) -> TrainConfig:
    base = {
        "epochs": 4,
        "batch_size": 16,
        "device": device,
        "min_epoch": 1,
        "warmup_epochs": 1.0,
        "patience": 100,
    }
    return TrainConfig.from_benchmark("eao", **{**base, **kw})


@pytest.fixture(scope="module")
def eao_fits() -> dict[str, object]:
    data = planted_eao_data()
    return {dev: fit_eao(data, SPECS, [1e-3, 1e-2], _eao_config(dev)) for dev in ("cpu", "cuda")}


def test_eao_grid_trains_on_cuda_as_on_cpu(eao_fits: dict) -> None:
    cpu, gpu = eao_fits["cpu"], eao_fits["cuda"]
    assert gpu.extra["device"].startswith("cuda") and cpu.extra["device"] == "cpu"
    np.testing.assert_allclose(gpu.history[LOSSES].to_numpy(), cpu.history[LOSSES].to_numpy(), rtol=1e-3)
    for name, sel in cpu.selections.items():
        np.testing.assert_allclose(gpu.selections[name].val_logits, sel.val_logits, atol=2e-3, err_msg=name)


@pytest.mark.parametrize(
    ("grids", "lrs", "patience"),
    [
        (GRIDS, [1e-3, 1e-2], 100),  # 12 and 8 tokens: batches padded to their longest case
        ([(3, 3, 1), (4, 2, 2)], [1e-3, 1e-2], 100),  # 9 and 16: graphs pad 9 to 12 tokens, eager to 9
        (GRIDS, [0.0, 1e-3, 1e-2], 2),  # the lr-0 member stops early: its stack is cut and recaptured
    ],
)
def test_cuda_graphed_steps_train_as_eager_ones(grids: list, lrs: list[float], patience: int) -> None:
    data, config = planted_eao_data(grids=grids), _eao_config("cuda", epochs=8, patience=patience)
    eager = fit_eao(data, SPECS, lrs, config, cuda_graphs=False)
    graphed = fit_eao(data, SPECS, lrs, config)
    assert graphed.extra["cuda_graphs"] and not eager.extra["cuda_graphs"]
    assert graphed.stopped_epoch.tolist() == eager.stopped_epoch.tolist()
    if patience < 100:
        assert 0 < graphed.stopped_epoch[0] < 8  # a member did stop
    np.testing.assert_allclose(
        graphed.history[LOSSES].to_numpy(), eager.history[LOSSES].to_numpy(), rtol=1e-5
    )
    for name, sel in eager.selections.items():
        np.testing.assert_allclose(
            graphed.selections[name].val_logits, sel.val_logits, atol=1e-5, err_msg=name
        )


def test_eao_on_cuda_is_deterministic(eao_fits: dict) -> None:
    again = fit_eao(planted_eao_data(), SPECS, [1e-3, 1e-2], _eao_config("cuda"))
    np.testing.assert_array_equal(
        again.history[LOSSES].to_numpy(), eao_fits["cuda"].history[LOSSES].to_numpy()
    )


@pytest.mark.parametrize("name", sorted(EAO_HEADS))
def test_padding_never_changes_a_prediction_on_cuda(name: str) -> None:
    torch.manual_seed(0)
    options = {"attn-pool": {"num_layers": 1}, "abmil": {"hidden": 16}, "mlp": {"hidden": 16}}
    head = build_head(name, dim=8, num_classes=2, **options.get(name, {})).eval().cuda()
    short, long = torch.randn(1, 4, 8, device="cuda"), torch.randn(1, 9, 8, device="cuda")
    padded = torch.full((2, 9, 8), 123.0, device="cuda")  # garbage in the padding must be ignored
    padded[0, :4], padded[1] = short[0], long[0]
    mask = torch.zeros(2, 9, dtype=torch.bool, device="cuda")
    mask[0, 4:] = True
    with torch.no_grad():
        batched = head(padded, mask)
        torch.testing.assert_close(batched[0:1], head(short, None), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched[1:2], head(long, None), atol=1e-5, rtol=1e-5)


def test_a_cuda_checkpoint_predicts_the_same_on_cpu_and_cuda(eao_fits: dict, tmp_path: Path) -> None:
    fit, data, config = eao_fits["cuda"], planted_eao_data(), _eao_config("cuda")
    disease = DiseaseData("ascites", table=None, x=data.reader.tokens, store_key={"model": "m"})  # type: ignore[arg-type]
    run = DiseaseLayout.of(tmp_path, "m", "ascites", "eao").run()
    save_eao_checkpoints(fit, run, disease, config)
    cases = [data.reader.case(int(r)) for r in data.val_rows]
    for name, sel in fit.selections.items():
        for device in ("cpu", "cuda"):
            logits = load_predictor(run.checkpoint(name), device=device).predict_logits(cases)
            np.testing.assert_allclose(logits, sel.val_logits, atol=1e-4, err_msg=f"{name} on {device}")


def test_linear_probe_grid_trains_on_cuda_as_on_cpu() -> None:
    x, y = planted(160, 12, signal=1.0, seed=4)
    args = (*split_arrays(x, y, 120), build_grid([1e-3, 3e-2], [1e-4, 1e-1], ["raw", "std", "l2", "ln"]))
    fits = {
        dev: fit_linear_grid(*args, TrainConfig(epochs=6, batch_size=32, patience=100, device=dev))
        for dev in ("cpu", "cuda")
    }
    for key in ("final_weight", "final_bias"):
        np.testing.assert_allclose(fits["cuda"].extra[key], fits["cpu"].extra[key], rtol=1e-3, atol=1e-5)


def test_cnn3d_features_on_cuda_match_cpu_and_repeat_exactly() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((2, 64, 64, 64), dtype=np.float32)
    feats = {}
    for device in ("cpu", "cuda"):
        extractor = Cnn3dExtractor()
        extractor.setup(device=device, seed=0)
        feats[device] = {
            task: np.stack(extractor.extract(images, None, (3.0,) * 3, task)) for task in ("lp", "eao")
        }
        if device == "cuda":
            again = np.stack(extractor.extract(images, None, (3.0,) * 3, "eao"))
            np.testing.assert_array_equal(again, feats["cuda"]["eao"])
    for task in ("lp", "eao"):
        cpu, gpu = feats["cpu"][task], feats["cuda"][task]
        assert gpu.shape == cpu.shape
        # cuDNN may use TF32 for float32 convolutions: agreement to about 1e-3 of the feature scale
        np.testing.assert_allclose(gpu, cpu, atol=1e-2 * float(np.abs(cpu).max()), err_msg=task)


def test_probe_eao_cli_on_cuda_records_the_device_and_its_checkpoint_scores_on_cpu(
    cli, tmp_path: Path
) -> None:
    store, labels = write_token_bench(tmp_path)
    out = tmp_path / "probes"
    cli(
        "probe", "eao", "--store", store, "--model", "tiny", "--labels", labels, "--out", out,
        "--disease", DISEASE, "--head", "attn-pool", "--num-layers", "1", "--num-heads", "2",
        "--lrs", "1e-3,1e-2", "--epochs", "3", "--batch-size", "16", "--min-epoch", "1", "--device", "cuda",
    )  # fmt: skip
    summary = json.loads(DiseaseLayout.of(out, "tiny", DISEASE, "eao").summary.read_text())
    assert summary["runs"][0]["device"].startswith("cuda"), summary["runs"][0]
    scored = eval_val(cli, out, store, labels, tmp_path / "eval")
    assert int(scored["n_missing_failed"]) == 0 and 0.0 <= scored["balanced_acc"] <= 1.0
