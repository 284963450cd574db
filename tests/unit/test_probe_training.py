"""The shared training machinery: schedules, sampler, early stopping, strategies and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import ConfigError
from ctfm.probe.options import ProbeOptions
from ctfm.probe.training import (
    BatchSampler,
    EarlyStopping,
    StrategyTracker,
    TrainConfig,
    batched_metrics,
    build_schedule,
    full_metrics,
    mean_std,
)


def _torch_lrs(scheduler_factory, total: int) -> tuple[list[float], list[float]]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = scheduler_factory(opt)
    lrs, b1 = [], []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        b1.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    return lrs, b1


def test_cosine_warmup_matches_torch_schedulers():
    epochs, steps, warm = 12, 5, 3
    total = epochs * steps

    def factory(opt):
        w = torch.optim.lr_scheduler.LinearLR(
            opt, start_factor=1e-3, end_factor=1.0, total_iters=warm * steps
        )
        c = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warm * steps, eta_min=0)
        return torch.optim.lr_scheduler.SequentialLR(opt, [w, c], milestones=[warm * steps])

    expected, _ = _torch_lrs(factory, total)
    got = build_schedule("cosine", epochs, steps, warm).lr_factor
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_onecycle_matches_torch_lr_and_beta1():
    epochs, steps = 10, 4

    def factory(opt):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, epochs=epochs, steps_per_epoch=steps)

    lrs, b1 = _torch_lrs(factory, epochs * steps)
    sched = build_schedule("onecycle", epochs, steps)
    np.testing.assert_allclose(sched.lr_factor, lrs, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(sched.beta1, b1, rtol=1e-6)
    assert np.all(build_schedule("none", 3, 2).lr_factor == 1.0)


def test_weighted_sampler_balances_classes_and_is_seeded():
    y = np.array([0] * 90 + [1] * 10)
    a = BatchSampler(y, 32, "weighted", seed=3, num_classes=2)
    b = BatchSampler(y, 32, "weighted", seed=3, num_classes=2)
    draws = [torch.cat(a.epoch()) for _ in range(20)]
    assert all(torch.equal(d, torch.cat(b.epoch())) for d in draws)
    assert a.steps_per_epoch == 3 and len(draws[0]) == 96  # short last batch dropped
    share = np.mean([y[d.numpy()].mean() for d in draws])
    assert 0.4 < share < 0.6  # inverse-frequency sampling with replacement
    perm = BatchSampler(y, 200, "none", seed=0, num_classes=2)  # batch > n: one batch, all cases
    (only,) = perm.epoch()
    assert sorted(only.tolist()) == list(range(100))


@pytest.mark.parametrize(
    ("labels", "batch"), [([0] * 70 + [1] * 30, 32), ([0, 1] * 50, 32), ([0] * 20 + [1] * 7, 128)]
)
def test_weighted_batches_are_the_reference_dataloaders(labels, batch):
    """The reference's loader, from the protocol: a seeded WeightedRandomSampler over float32 inverse-frequency
    weights (RandomSampler with replacement when they are all equal), batch clamped to the train size and
    drop_last only when the train set holds a full batch. Same seed, same batches, epoch after epoch."""
    y = np.array(labels)
    counts = np.bincount(y)
    weights = torch.as_tensor(len(y) / (2 * counts[y]), dtype=torch.float)
    gen = torch.Generator().manual_seed(7)
    if torch.isclose(weights.max(), weights.min()):
        sampler = torch.utils.data.RandomSampler(
            range(len(y)), replacement=True, num_samples=len(y), generator=gen
        )
    else:
        sampler = torch.utils.data.WeightedRandomSampler(weights, len(y), replacement=True, generator=gen)
    loader = torch.utils.data.DataLoader(
        torch.arange(len(y)), batch_size=min(batch, len(y)), sampler=sampler, drop_last=len(y) >= batch
    )
    ours = BatchSampler(y, batch, "weighted", seed=7, num_classes=2)
    for _ in range(4):
        expected = list(loader)
        got = ours.epoch()
        assert len(got) == len(expected) == ours.steps_per_epoch
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_scaled_sampler_draws_the_rare_class_ten_times_as_often_per_case_as_the_reference_eao():
    y = np.array([0] * 90 + [1] * 10)
    s = BatchSampler(y, 10, "weighted-scaled", seed=0, num_classes=2)
    assert s.sample_weights[y == 0].unique().tolist() == [pytest.approx(0.1)]
    assert s.sample_weights[y == 1].unique().tolist() == [pytest.approx(1.0)]
    share = np.mean([y[torch.cat(s.epoch()).numpy()].mean() for _ in range(50)])
    assert abs(share - 10 / (10 + 9)) < 0.03  # 10 x 1.0 against 90 x 0.1
    balanced = BatchSampler(np.array([0, 1] * 5), 4, "weighted-scaled", seed=0, num_classes=2)
    assert balanced.uniform and torch.all(balanced.sample_weights == balanced.sample_weights[0])


def test_early_stopping_stops_a_plateau_at_min_epoch_plus_patience():
    stop = EarlyStopping(2, "min", decay=0.9, patience=4, min_epoch=6)
    heads = np.arange(2)
    stopped_at = {}
    for epoch in range(1, 30):
        values = np.array([1.0, 1.0 / epoch])  # head 0 plateaus, head 1 keeps improving
        active = heads[~stop.stopped]
        for h in stop.update(epoch, active, values[active]):
            stopped_at[int(h)] = epoch
    assert stopped_at == {0: 6 + 4 - 1}
    assert stop.stopped_epoch.tolist() == [9, 0]


def test_strategy_tracker_keeps_best_and_breaks_ties_by_grid_order():
    tracker = StrategyTracker(["val_loss", "val_balanced_acc"], min_epoch=2)
    snap = lambda i: ({"w": np.array([i])}, np.zeros((3, 1)))  # noqa: E731
    m1 = {"val_loss": np.array([0.5, 0.4]), "val_balanced_acc": np.array([0.7, 0.7]), "val_auroc": np.ones(2)}
    assert tracker.update(1, np.array([5, 3]), m1, snap) == []  # before min_epoch
    tracker.update(2, np.array([5, 3]), m1, snap)
    assert tracker.best["val_loss"].head == 3 and tracker.best["val_balanced_acc"].head == 3
    m3 = {"val_loss": np.array([0.45]), "val_balanced_acc": np.array([0.7]), "val_auroc": np.ones(1)}
    assert tracker.update(3, np.array([5]), m3, snap) == []  # equal is not better: earliest epoch kept
    assert tracker.best["val_balanced_acc"].epoch == 2


def _softmax32(logits: np.ndarray) -> np.ndarray:
    """Class probabilities as the reference's torchmetrics makes them from float32 logits (ties included)."""
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float32), dim=-1).numpy()


def _reference_balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """The reference's balanced accuracy from scikit-learn per class: mean of (recall + specificity) / 2."""
    return float(
        np.mean(
            [
                (skm.recall_score(y == c, pred == c, zero_division=0) + skm.recall_score(y != c, pred != c))
                / 2
                for c in range(n_classes)
            ]
        )
    )


def test_batched_metrics_match_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    logits = np.round(rng.normal(size=(5, 40, 2)), 1)  # rounding makes ties
    loss = np.zeros(5)
    m = batched_metrics(y, logits, loss)
    for h in range(5):
        p = _softmax32(logits[h])
        pred = logits[h].argmax(1)
        # macro over both classes, as the reference (float32 ties of p0 and p1 can differ)
        assert m["val_auroc"][h] == pytest.approx(
            np.mean([skm.roc_auc_score(y == c, p[:, c]) for c in (0, 1)])
        )
        assert m["val_balanced_acc"][h] == pytest.approx(skm.balanced_accuracy_score(y, pred))
        assert m["val_balanced_acc"][h] == pytest.approx(_reference_balanced_accuracy(y, pred, 2))


def test_batched_metrics_multiclass_are_the_reference_definitions():
    """3 classes: balanced accuracy is the class mean of (recall + specificity) / 2 (not scikit-learn's mean
    recall); AUROC is the macro one-vs-rest AUROC of the softmax."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 60)
    logits = rng.normal(size=(3, 60, 3)) + 0.7 * np.eye(3)[y]
    m = batched_metrics(y, logits, np.zeros(3))
    for h in range(3):
        p = np.exp(logits[h]) / np.exp(logits[h]).sum(1, keepdims=True)
        pred = logits[h].argmax(1)
        assert m["val_auroc"][h] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
        assert m["val_balanced_acc"][h] == pytest.approx(_reference_balanced_accuracy(y, pred, 3))
        assert m["val_balanced_acc"][h] != pytest.approx(skm.balanced_accuracy_score(y, pred))


@pytest.mark.parametrize("classes", [2, 3])
def test_full_metrics_are_the_reference_definitions(classes):
    """A selected head's val metrics, rebuilt from scikit-learn per class: macro over classes, binary included
    (binary sensitivity = specificity = balanced accuracy), balanced accuracy the class mean of
    (recall + specificity) / 2, AUROC and AP the class means of one-vs-rest values."""
    rng = np.random.default_rng(classes)
    y = rng.integers(0, classes, 50)
    z = np.round(rng.normal(size=(50, classes)) + 0.8 * np.eye(classes)[y], 1)
    m = full_metrics(y, z)
    p = _softmax32(z)
    pred = z.argmax(1)
    per_class = range(classes)
    assert m["acc"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["specificity"] == pytest.approx(
        np.mean([skm.recall_score(y != c, pred != c) for c in per_class])
    )
    assert m["balanced_acc"] == pytest.approx(_reference_balanced_accuracy(y, pred, classes))
    assert m["auroc"] == pytest.approx(np.mean([skm.roc_auc_score(y == c, p[:, c]) for c in per_class]))
    assert m["ap"] == pytest.approx(
        np.mean([skm.average_precision_score(y == c, p[:, c]) for c in per_class])
    )
    assert m["loss"] == pytest.approx(skm.log_loss(y, p), rel=1e-5)
    if classes == 2:
        assert m["sensitivity"] == pytest.approx(m["specificity"]) == pytest.approx(m["balanced_acc"])
    assert m["val_balacc_auroc"] == pytest.approx(0.5 * m["balanced_acc"] + 0.5 * m["auroc"])
    assert m["val_balacc_loss"] == pytest.approx(0.5 * m["balanced_acc"] - 0.5 * m["loss"])


def test_config_defaults_follow_the_reference_protocol_and_validate():
    cfg = TrainConfig.from_benchmark()
    assert (cfg.epochs, cfg.batch_size, cfg.optimizer, cfg.schedule) == (150, 128, "adamw", "cosine")
    assert (cfg.patience, cfg.min_epoch, cfg.ema_decay, cfg.seed, cfg.monitor) == (10, 6, 0.9, 42, "val_loss")
    assert TrainConfig.from_benchmark(epochs=8, optimizer=None).epochs == 8
    with pytest.raises(ConfigError, match="--epochs 5 is below --min-epoch 6"):
        TrainConfig.from_benchmark(epochs=5)  # would finish "done" without a checkpoint
    eao = TrainConfig.from_benchmark("eao")  # the reference EAO trainer's defaults
    assert (eao.epochs, eao.batch_size, eao.schedule, eao.sampling) == (1000, 8, "none", "weighted-scaled")
    assert (eao.patience, eao.min_epoch, eao.ema_decay, eao.monitor) == (50, 1, 0.0, "val_balanced_acc")
    with pytest.raises(ConfigError, match="--schedule"):
        TrainConfig.from_benchmark(schedule="step")
    with pytest.raises(ConfigError, match="--monitor"):
        TrainConfig.from_benchmark(monitor="val_f1")
    for option, flag in (
        ("warmup_epochs", "--warmup-epochs"),
        ("min_epoch", "--min-epoch"),
        ("threads", "--threads"),
    ):
        with pytest.raises(ConfigError, match=f"{flag} must be at least 0, not -1"):
            TrainConfig.from_benchmark(**{option: -1})
    assert TrainConfig.from_benchmark(warmup_epochs=0, min_epoch=0, threads=0).min_epoch == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lrs": [1e-3, 0.0]}, "--lrs values must be positive, not 0"),
        ({"weight_decays": [-1e-4]}, r"weight decay \(--weight-decays\) values must be at least 0"),
        ({"eps": [0.0]}, "--eps values must be positive"),
        ({"betas": [(0.9, 1.0)]}, r"--betas values must be in \[0, 1\), not 1"),
        ({"logreg_cs": [-2.0]}, "--cs values must be positive, not -2"),
    ],
)
def test_probe_options_reject_optimiser_values_out_of_range(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        ProbeOptions.defaults(
            store=tmp_path, model="m", labels=tmp_path, out=tmp_path, diseases=["x"], **options
        )
    # the same call with in-range values builds (weight decay 0 and beta1 0 are valid)
    ok = ProbeOptions.defaults(
        store=tmp_path,
        model="m",
        labels=tmp_path,
        out=tmp_path,
        diseases=["x"],
        weight_decays=[0.0],
        betas=[(0.0, 0.5)],
    )
    assert ok.weight_decays == [0.0]


def test_mean_std():
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(np.sqrt(2.0)), "n": 2}
    assert mean_std([0.5])["std"] == 0.0


def test_full_metrics_of_a_head_whose_val_lacks_a_class_follow_the_reference_rules():
    """A 4-class head (train had class 3) scored on val labels 0..2: F1 and sensitivity average the classes
    seen in labels or predictions (scikit-learn's macro), while balanced accuracy and AUROC average all four
    classes, the absent one adding (0 + 1) / 2 and 0 (the reference's torchmetrics rules)."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 80)
    z = rng.normal(size=(80, 4)) + 1.5 * np.eye(4)[y]
    z[:, 3] -= 3.0  # class 3 is never predicted
    m = full_metrics(y, z)
    pred, p = z.argmax(1), _softmax32(z)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["balanced_acc"] == pytest.approx((3 * _reference_balanced_accuracy(y, pred, 3) + 0.5) / 4)
    assert m["auroc"] == pytest.approx(sum(skm.roc_auc_score(y == c, p[:, c]) for c in range(3)) / 4)


@pytest.mark.parametrize(
    ("task", "options", "message"),
    [
        ("lp", {"probe": "forest"}, r"--probe 'forest' is not one of grid, logreg"),
        ("eao", {"dtype": "int8"}, r"--dtype 'int8' is not one of"),
        ("eao", {"eval_batch_size": 0}, r"--eval-batch-size must be at least 1, not 0"),
        ("eao", {"weight_decays": [0.0, 1e-4]}, r"EAO trains with one weight decay per run"),
        ("seg", {}, r"probe task 'seg' is not one of lp, eao"),
    ],
)
def test_probe_options_check_the_task_settings_when_made(tmp_path, task, options, message):
    """A bad task setting is one error when the options are made, before any disease (or Slurm task)."""
    where = {"store": tmp_path, "model": "m", "labels": tmp_path, "out": tmp_path, "diseases": ["x"]}
    with pytest.raises(ConfigError, match=message):
        ProbeOptions.defaults(task, **where, **options)
    eao = ProbeOptions.defaults("eao", **where)  # the heads default to the configured one
    assert [s.name for s in eao.heads] == [load_benchmark().section("eao")["head"]]
    assert eao.probe == eao.heads[0].name and "heads" not in eao.describe()
