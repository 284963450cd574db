"""The batched linear grid: exactness against per-head PyTorch, learning, determinism, stopping, strategies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from ctfm.probe.linear import build_grid, fit_linear_grid, fit_logreg, grid_heads, init_heads
from ctfm.probe.training import STRATEGIES, TrainConfig
from probe_fixtures import planted, split_arrays


def small_config(**kw) -> TrainConfig:
    base = dict(epochs=12, batch_size=32, patience=3, min_epoch=3, device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base).validated()


def _plain_torch_heads(x_tr, y_tr, grid, cfg, warmup_epochs):
    """The textbook way, written here from the protocol: one ``nn.Linear(D, C)`` per head in one AdamW (or SGD)
    with a param group per head, ``nn.CrossEntropyLoss`` summed over heads, batches of a ``DataLoader`` over a
    seeded ``WeightedRandomSampler`` (inverse class frequency, with replacement, drop_last), torch's
    LinearLR(1e-3) + CosineAnnealingLR stepped per iteration, and float64 train statistics for ``std``."""
    n_classes = int(y_tr.max()) + 1
    w0, b0 = init_heads(
        len(grid), n_classes, x_tr.shape[1], cfg.seed, standardised="std" in {p.norm for p in grid}
    )
    assert w0.shape == (len(grid), n_classes, x_tr.shape[1]) and not b0.any()
    heads = []
    for i in range(len(grid)):
        m = torch.nn.Linear(x_tr.shape[1], n_classes)
        with torch.no_grad():
            m.weight.copy_(w0[i])
            m.bias.copy_(b0[i])
        heads.append(m)
    groups = [
        {"params": h.parameters(), "lr": p.lr, "weight_decay": p.weight_decay, "betas": p.betas, "eps": p.eps}
        for h, p in zip(heads, grid, strict=True)
    ]
    opt = torch.optim.AdamW(groups) if cfg.optimizer == "adamw" else torch.optim.SGD(groups, momentum=0.9)
    x = torch.as_tensor(x_tr)
    x64 = x.double()
    mean = x64.mean(0)
    std = ((x64 * x64).mean(0) - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
    views = {
        "raw": lambda v: v,
        "std": lambda v: (v - mean.float()) / std.float(),
        "l2": lambda v: F.normalize(v, dim=1),
        "ln": lambda v: F.layer_norm(v, (v.shape[1],)),
    }
    counts = np.bincount(y_tr, minlength=n_classes)
    weights = torch.as_tensor(len(y_tr) / (n_classes * counts[y_tr]), dtype=torch.float)
    sampler = WeightedRandomSampler(
        weights, len(y_tr), replacement=True, generator=torch.Generator().manual_seed(cfg.seed)
    )
    loader = DataLoader(
        TensorDataset(x, torch.as_tensor(y_tr)), batch_size=cfg.batch_size, sampler=sampler, drop_last=True
    )
    warm = warmup_epochs * len(loader)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-3, end_factor=1.0, total_iters=warm),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * len(loader) - warm, eta_min=0),
        ],
        milestones=[warm],
    )
    crit = torch.nn.CrossEntropyLoss()
    for _ in range(cfg.epochs):
        for xb, yb in loader:
            loss = torch.stack(
                [crit(h(views[p.norm](xb)), yb) for h, p in zip(heads, grid, strict=True)]
            ).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return np.stack([h.weight.detach().numpy() for h in heads]), np.stack(
        [h.bias.detach().numpy() for h in heads]
    )


@pytest.mark.parametrize(
    ("optimizer", "norms", "classes"),
    [("adamw", ["raw", "std"], 2), ("adamw", ["raw", "std"], 3), ("sgd", ["raw", "l2", "ln"], 2)],
)
def test_batched_grid_equals_plain_linear_cross_entropy_adamw(optimizer, norms, classes):
    """ctfm's all-heads-in-one-tensor training is the reference's maths: C logits, cross-entropy, AdamW with
    per-head lr/weight decay/betas, the reference sampler and schedule (weights to 1e-5 after 16 steps)."""
    x, y = planted(180, 7, seed=1, classes=classes)
    keep = (y != 1) | (np.arange(len(y)) % 3 > 0)  # class 1 rarer: the sampler's weights matter
    x_tr, y_tr, x_va, y_va = split_arrays(x[keep], y[keep], 100)
    betas = [(0.9, 0.999), (0.8, 0.99)] if optimizer == "adamw" else [(0.9, 0.999)]
    grid = build_grid([1e-3, 3e-2], [1e-4, 1e-1], norms, betas=betas)
    cfg = small_config(epochs=4, patience=100, optimizer=optimizer, warmup_epochs=1)
    fit = fit_linear_grid(x_tr, y_tr, x_va, y_va, grid, cfg)
    ref_w, ref_b = _plain_torch_heads(x_tr, y_tr, grid, cfg, warmup_epochs=1)
    assert fit.extra["final_weight"].shape == (len(grid), classes, 7)
    np.testing.assert_allclose(fit.extra["final_weight"], ref_w, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fit.extra["final_bias"], ref_b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("standardised", [True, False])
def test_heads_start_from_the_reference_trainers_initial_weights(standardised):
    """run_LP.py: torch.manual_seed(seed); the train-statistics DataLoader is iterated once when a head uses
    ``std``; then per head in grid order nn.Linear(D, C), weights redrawn from N(0, 0.01), bias zero."""
    torch.manual_seed(42)
    if standardised:
        iter(DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2))
    expected = []
    for _ in range(6):
        head = torch.nn.Linear(1120, 2)
        torch.nn.init.normal_(head.weight, 0.0, 0.01)
        torch.nn.init.zeros_(head.bias)
        expected.append(head.weight.detach())
    w, b = init_heads(6, 2, 1120, seed=42, standardised=standardised)
    assert torch.equal(w, torch.stack(expected)) and b.shape == (6, 2) and not b.any()
    assert abs(float(w.std()) - 0.01) < 1e-4


def test_planted_signal_is_learned_and_defaults_make_104_heads():
    from ctfm.core.benchmark import load_benchmark

    lp = load_benchmark().section("linear_probe")
    assert len(build_grid(lp["lrs"], lp["weight_decays"], lp["norms"])) == 104
    x, y = planted(300, 24, signal=2.0, seed=2)
    x_tr, y_tr, x_va, y_va = split_arrays(x, y, 220)
    grid = build_grid([1e-3, 1e-2, 1e-1], [1e-4], ["raw", "std", "ln", "l2"])
    fit = fit_linear_grid(x_tr, y_tr, x_va, y_va, grid, small_config(epochs=20, patience=5))
    assert fit.selections["val_auroc"].metrics["auroc"] > 0.9
    assert fit.selections["val_balanced_acc"].metrics["balanced_acc"] > 0.85
    assert set(fit.selections) == set(STRATEGIES)


def test_same_seed_same_result_other_seed_differs():
    x, y = planted(100, 8, signal=0.5, seed=3)
    args = (*split_arrays(x, y, 70), build_grid([1e-2, 1e-1], [1e-3], ["raw", "std"]))
    a = fit_linear_grid(*args, small_config(seed=5))
    b = fit_linear_grid(*args, small_config(seed=5))
    c = fit_linear_grid(*args, small_config(seed=6))
    np.testing.assert_array_equal(a.extra["final_weight"], b.extra["final_weight"])
    assert a.history.equals(b.history)
    assert not np.array_equal(a.extra["final_weight"], c.extra["final_weight"])


def test_plateaued_head_stops_while_a_learning_head_continues():
    x, y = planted(100, 8, signal=1.0, seed=4)
    grid = build_grid([0.0, 1e-3], [0.0], ["raw"])  # lr 0: val loss is flat from epoch 1
    cfg = small_config(epochs=40, patience=4, min_epoch=3, schedule="none")
    fit = fit_linear_grid(*split_arrays(x, y, 70), grid, cfg)
    assert fit.stopped_epoch[0] == 3 + 4 - 1
    assert fit.stopped_epoch[1] == 0 or fit.stopped_epoch[1] > fit.stopped_epoch[0]
    h0 = fit.history[fit.history["head"] == 0]
    assert h0["epoch"].max() == fit.stopped_epoch[0]  # frozen afterwards: no more rows
    np.testing.assert_allclose(h0["val_loss"], h0["val_loss"].iloc[0])


def test_each_strategy_picks_the_best_active_head_epoch():
    x, y = planted(120, 10, signal=0.4, seed=5)
    x_tr, y_tr, x_va, y_va = split_arrays(x, y, 80)
    grid = build_grid([1e-3, 1e-2, 1e-1], [1e-4, 1e-2], ["raw", "std"])
    cfg = small_config(epochs=25, patience=3, min_epoch=4)
    fit = fit_linear_grid(x_tr, y_tr, x_va, y_va, grid, cfg)
    h = fit.history
    stopped = fit.stopped_epoch[h["head"].to_numpy()]
    eligible = h[(h["epoch"] >= cfg.min_epoch) & (stopped != h["epoch"].to_numpy())]
    cols = {c: eligible[c].to_numpy() for c in ("val_loss", "val_balanced_acc", "val_auroc")}
    for name, (mode, fn) in STRATEGIES.items():
        scores = fn(cols)
        best = scores.max() if mode == "max" else scores.min()
        sel = fit.selections[name]
        row = eligible[(eligible["head"] == sel.head) & (eligible["epoch"] == sel.epoch)]
        assert len(row) == 1, name
        assert fn({c: row[c].to_numpy() for c in cols})[0] == pytest.approx(best), name
        assert sel.score == pytest.approx(best)
        # the snapshot is that head at that epoch: its saved logits reproduce the recorded val metrics
        assert sel.metrics["balanced_acc"] == pytest.approx(row["val_balanced_acc"].iloc[0])
        assert sel.metrics["loss"] == pytest.approx(row["val_loss"].iloc[0], rel=1e-4)
    assert {"val_balanced_acc", "val_auroc", "val_loss", "val_balacc_auroc", "val_balacc_loss"} == set(
        fit.selections
    )


def test_multiclass_and_other_sampling_modes_run():
    x, y = planted(150, 9, signal=2.0, seed=6, classes=3)
    grid = build_grid([1e-2], [1e-4], ["std"])
    for sampling in ("loss-weight", "none"):
        fit = fit_linear_grid(
            *split_arrays(x, y, 100), grid, small_config(sampling=sampling, schedule="onecycle")
        )
        sel = fit.selections["val_balanced_acc"]
        assert sel.state["weight"].shape == (3, 9) and fit.classes == [0, 1, 2]
        assert sel.metrics["balanced_acc"] > 0.6


def test_logreg_agrees_with_the_grid_on_an_easy_problem():
    x, y = planted(200, 12, signal=4.0, seed=7)
    x_tr, y_tr, x_va, y_va = split_arrays(x, y, 140)
    grid_fit = fit_linear_grid(
        x_tr, y_tr, x_va, y_va, build_grid([1e-2, 1e-1], [1e-4], ["std"]), small_config(epochs=20)
    )
    lr_fit = fit_logreg(x_tr, y_tr, x_va, y_va, ["raw", "std"], small_config(), cs=[0.01, 1.0])
    a = grid_fit.selections["val_balanced_acc"].metrics["balanced_acc"]
    b = lr_fit.selections["val_balanced_acc"].metrics["balanced_acc"]
    assert a > 0.9 and b > 0.9 and abs(a - b) <= 0.05
    assert len(lr_fit.heads) == 4 and lr_fit.heads[0]["name"].startswith("logreg_C_")


def test_head_names_follow_the_reference_scheme():
    names = [h["name"] for h in grid_heads(build_grid([1e-5, 0.1], [1e-4], ["raw", "std"]))]
    assert names == [
        "clf_lr_1e_05_norm_raw",
        "clf_lr_1e_05_norm_std",
        "clf_lr_1e_01_norm_raw",
        "clf_lr_1e_01_norm_std",
    ]


def test_one_class_split_is_a_clear_error():
    from ctfm.core.errors import DataError

    x, y = planted(40, 4)
    with pytest.raises(DataError, match="val split holds only class"):
        fit_linear_grid(
            x[:30], y[:30], x[30:], np.zeros(10, int), build_grid([1e-2], [0.0], ["raw"]), small_config()
        )
