"""EAO trainer: padded batches, bucketing, memory planning, the shared training rules, checkpoints."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ctfm.probe.eao as eao_module
from ctfm.core.errors import ConfigError, DataError
from ctfm.probe.checkpoint import load_predictor
from ctfm.probe.data import DiseaseData
from ctfm.probe.eao import (
    available_bytes,
    check_memory,
    cuda_graphed,
    eval_batch,
    fit_eao,
    mem_available_bytes,
    plan_memory,
    save_eao_checkpoints,
)
from ctfm.probe.eao_grid import HeadGrid, HeadSpec, eao_head_specs, graph_length
from ctfm.probe.figure import panel_groups
from ctfm.probe.layout import DiseaseLayout
from ctfm.probe.tokens import TokenReader, bucketed_batches
from ctfm.probe.training import TrainConfig, reuse_freed_memory
from ctfm.store import to_bfloat16_bits
from eao_fixtures import flatten, one_thread, planted_eao_data  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_reader_pads_cases_of_different_grids_without_resizing() -> None:
    cases = [np.full((n, 4), i + 1, np.float32) for i, n in enumerate([3, 5, 2])]
    reader = TokenReader(*flatten(cases))
    b = reader.batch(np.array([2, 1]))
    assert b.tokens.shape == (2, 5, 4)
    assert b.mask.tolist() == [[False, False, True, True, True], [False] * 5]
    assert torch.all(b.tokens[0, :2] == 3) and torch.all(b.tokens[0, 2:] == 0)
    assert reader.batch(np.array([1, 1])).mask is None  # no padding: the heads skip masking
    np.testing.assert_array_equal(reader.case(1), cases[1])


def test_reader_decodes_float16_and_bfloat16_caches() -> None:
    x = np.linspace(-2, 2, 24, dtype=np.float32).reshape(6, 4)
    offsets = np.array([0, 2, 6])
    half = TokenReader(x.astype(np.float16), offsets, "float16").batch(np.array([1]))
    bf = TokenReader(to_bfloat16_bits(x), offsets, "bfloat16").batch(np.array([1]))
    assert half.tokens.dtype == bf.tokens.dtype == torch.float32
    np.testing.assert_allclose(half.tokens[0].numpy(), x[2:], atol=1e-2)
    np.testing.assert_allclose(bf.tokens[0].numpy(), x[2:], atol=2e-2)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_reader_of_a_file_backed_cache_reads_cases_without_the_mapping(tmp_path: Path, dtype: str) -> None:
    x = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    stored = to_bfloat16_bits(x) if dtype == "bfloat16" else x.astype(dtype)
    path = tmp_path / "tokens.bin"
    path.write_bytes(b"\0" * 16 + stored.tobytes())  # a header before the array: memmap offset
    mm = np.memmap(path, dtype=stored.dtype, mode="r", offset=16, shape=stored.shape)
    offsets = np.array([0, 2, 7, 9])
    reader = TokenReader(mm, offsets, dtype)
    assert reader._fd is not None  # reads go through pread, not the mapping
    in_memory = TokenReader(np.asarray(stored), offsets, dtype)
    b, ref = reader.batch(np.array([2, 1, 0])), in_memory.batch(np.array([2, 1, 0]))
    torch.testing.assert_close(b.tokens, ref.tokens, atol=0, rtol=0)
    assert torch.equal(b.mask, ref.mask)
    np.testing.assert_array_equal(reader.case(1), in_memory.case(1))


def test_bucketed_batches_cover_the_epoch_and_group_similar_lengths() -> None:
    rng = np.random.default_rng(0)
    lengths = np.array([10, 100] * 32)
    order = rng.permutation(64)
    batches = bucketed_batches(order, lengths, 8, rng, window=8)
    assert sorted(np.concatenate(batches).tolist()) == sorted(order.tolist())
    assert all(len(np.unique(lengths[b])) == 1 for b in batches)  # one length per batch here


def test_memory_plan_refuses_a_run_that_cannot_fit() -> None:
    reader = TokenReader(*flatten([np.zeros((125, 32), np.float32)] * 4))
    specs = [HeadSpec("attn-pool"), HeadSpec("abmil")]
    plan = plan_memory(specs, 3, reader, batch_size=4, num_classes=2, available=10**12)
    assert plan.total > plan.batch_bytes > 0 and plan.cache_bytes == reader.tokens.nbytes
    check_memory(plan)
    tight = plan_memory(specs, 3, reader, batch_size=4, num_classes=2, available=plan.total)
    with pytest.raises(ConfigError, match="does not fit"):
        check_memory(tight)
    assert mem_available_bytes(Path("/nonexistent")) is None


def test_validation_batches_hold_a_token_budget_of_cases_and_the_plan_counts_them() -> None:
    assert eval_batch(8, longest=125) == 16384 // 125  # small grids: few, large batches
    assert eval_batch(8, longest=8**3) == 32  # large grids: never below 4x the training batch
    assert eval_batch(8, longest=125, eval_batch_size=5) == 5
    small = TokenReader(*flatten([np.zeros((125, 32), np.float32)] * 200))
    plan = plan_memory([HeadSpec("mean-linear")], 1, small, batch_size=8, num_classes=2, available=None)
    assert plan.batch_bytes == 3 * 4 * 131 * 125 * 32  # the validation batch, the largest one read


def test_cuda_graphs_pad_to_few_lengths_apply_to_constant_schedules_and_are_planned_for() -> None:
    lengths = range(27, 217)  # grids 3x3x3 to 6x6x6
    padded = {t: graph_length(t, 216) for t in lengths}
    assert padded[64] == 64 and padded[65] == 91 and padded[125] == 128 and padded[200] == padded[216] == 216
    assert all(t <= p < 1.42 * t for t, p in padded.items()) and len(set(padded.values())) == 7
    assert graph_length(125, 125) == 125  # equal grids: no padding at all
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    constant = TrainConfig.from_benchmark("eao")
    assert constant.schedule == "none" and cuda_graphed(gpu, constant)
    assert not cuda_graphed(gpu, constant, enabled=False) and not cuda_graphed(cpu, constant)
    assert not cuda_graphed(gpu, TrainConfig.from_benchmark("eao", schedule="cosine"))
    with pytest.raises(ValueError, match="need a CUDA device"):
        HeadGrid([HeadSpec("mean-linear")], [1e-3], 8, 2, seed=0).use_cuda_graphs(8)
    # each captured shape (two batch sizes per padded length) keeps its gradients and activations
    reader = TokenReader(*flatten([np.zeros((t, 32), np.float32) for t in (64, 100, 125)]))
    eager = plan_memory([HeadSpec("attn-pool")], 3, reader, batch_size=2, num_classes=2, available=None)
    graphed = plan_memory([HeadSpec("attn-pool")], 3, reader, 2, 2, available=None, graphed=True)
    weights = eager.params_bytes // 4
    assert graphed.graph_bytes == 2 * 2 * (weights + eager.activation_bytes)  # 64, and 125 (100 pads to it)
    assert graphed.total == eager.total + graphed.graph_bytes and "CUDA graphs" in graphed.describe()
    assert "CUDA graphs" not in eager.describe()


def test_memory_available_is_the_gpus_free_memory_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU here: torch.cuda.mem_get_info is replaced by a stand-in reporting 3 GiB free of 80.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * 2**30, 80 * 2**30))
    assert available_bytes(torch.device("cuda")) == 3 * 2**30
    monkeypatch.setattr(eao_module, "mem_available_bytes", lambda: 123)  # the host's, fixed for the test
    assert available_bytes(torch.device("cpu")) == 123


def test_head_specs_take_config_defaults_and_only_accepted_options() -> None:
    specs = eao_head_specs(["attn-pool", "mean-linear", "abmil"], num_layers=1, hidden=8, dropout=None)
    reference = {"dropout": 0.0, "ffn_mult": 1, "num_heads": 4, "num_queries": 2}  # configs/benchmark.yaml
    assert specs[0].kwargs == {**reference, "num_layers": 1}
    assert specs[1].kwargs == {} and specs[2].kwargs == {"dropout": 0.0, "hidden": 8}
    with pytest.raises(ConfigError, match="--head"):
        eao_head_specs(["transformer"])


@pytest.mark.parametrize(
    ("head", "option", "value", "message"),
    [
        ("attn-pool", "num_heads", 0, "--num-heads must be an integer of at least 1, not 0"),
        ("attn-pool", "num_queries", 0, "--num-queries must be an integer of at least 1"),
        ("attn-pool", "num_layers", -1, "--num-layers must be an integer of at least 0"),
        ("attn-pool", "num_heads", 2.5, "--num-heads must be an integer"),
        ("attn-pool", "ffn_mult", 0.0, "--ffn-mult must be a positive number"),
        ("attn-pool", "dropout", 1.0, r"--dropout must be in \[0, 1\)"),
        ("abmil", "hidden", 0, "abmil: --hidden must be an integer of at least 1"),
        ("mlp", "dropout", -0.1, r"mlp: --dropout must be in \[0, 1\)"),
    ],
)
def test_head_options_out_of_range_are_config_errors(head: str, option: str, value, message: str) -> None:
    # Before, these crashed inside the head's constructor (division by zero) or built a degenerate head.
    with pytest.raises(ConfigError, match=message):
        eao_head_specs([head], **{option: value})


def test_head_options_at_their_bounds_are_accepted() -> None:
    (spec,) = eao_head_specs(
        ["attn-pool"], num_layers=0, num_heads=1, num_queries=1, dropout=0.0, ffn_mult=0.5
    )
    assert spec.kwargs["num_layers"] == 0 and spec.kwargs["ffn_mult"] == 0.5
    # options a head does not take are not checked against it (mean-linear has no dropout)
    assert eao_head_specs(["mean-linear"], dropout=5.0)[0].kwargs == {}


def _config(**kw: object) -> TrainConfig:
    base = {"epochs": 4, "batch_size": 16, "device": "cpu", "min_epoch": 1, "warmup_epochs": 1.0}
    return TrainConfig.from_benchmark("eao", **{**base, **kw})


SPECS = [HeadSpec("mean-linear"), HeadSpec("attn-pool", {"num_layers": 1, "num_heads": 2, "ffn_mult": 1.0})]


_FAULTS_SCRIPT = """
import ctypes, resource, torch
from ctfm.probe.training import reuse_freed_memory
# glibc's initial thresholds (128 KiB), pinned: its dynamic adjustment otherwise depends on what the process
# freed before, and in some runs had already stopped the faults before the call.
mallopt = ctypes.CDLL(None).mallopt
mallopt(-3, 128 << 10), mallopt(-1, 128 << 10)
def faults_per_round():
    def one():  # a training step's pattern: many gradient-sized blocks, then all freed
        blocks = [torch.ones(1 << 20) for _ in range(12)]
        del blocks
    one(), one()  # the heap grows to its working size once
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        one()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 10
before = faults_per_round()
applied = reuse_freed_memory()
print(before, applied, faults_per_round())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_training_reuses_freed_blocks_instead_of_faulting_in_fresh_pages() -> None:
    # In a child process: the setting is process-wide and one-way, and the test needs the "before".
    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, check=True)
    before, applied, after = out.stdout.split()
    assert applied == "True"
    assert float(before) > 10_000  # each round faults in its 48 MiB (12,288 pages) afresh
    assert float(after) < 0.01 * float(before)
    assert reuse_freed_memory() is True  # applied here too, once (fit_eao calls it)


def test_fit_trains_every_member_on_the_same_batches_deterministically() -> None:
    data = planted_eao_data()
    a = fit_eao(data, SPECS, [1e-3, 1e-2], _config())
    b = fit_eao(data, SPECS, [1e-3, 1e-2], _config())
    assert [h["name"] for h in a.heads] == ["mean-linear"] * 2 + ["attn-pool"] * 2
    assert [h["lr"] for h in a.heads] == [1e-3, 1e-2, 1e-3, 1e-2]
    assert len(a.history) == 4 * 4 and set(a.selections) == set(_config().strategies)
    pd_cols = ["train_loss", "val_loss", "val_balanced_acc"]
    np.testing.assert_allclose(a.history[pd_cols].to_numpy(), b.history[pd_cols].to_numpy())


def test_early_stopping_stops_a_plateaued_member() -> None:
    # lr 0 never changes the head: its monitored metric is flat and it stops after `patience` epochs.
    fit = fit_eao(planted_eao_data(), [HeadSpec("mean-linear")], [0.0, 1e-2], _config(epochs=12, patience=3))
    assert fit.stopped_epoch[0] == 4
    assert fit.history[fit.history["head"] == 0]["epoch"].max() == 4


def test_checkpoint_round_trips_through_load_predictor(tmp_path: Path) -> None:
    data = planted_eao_data()
    config = _config()
    fit = fit_eao(data, SPECS, [1e-2], config)
    disease = DiseaseData("ascites", table=None, x=data.reader.tokens, store_key={"model": "m"})  # type: ignore[arg-type]
    run = DiseaseLayout.of(tmp_path, "m", "ascites", "eao").run()
    save_eao_checkpoints(fit, run, disease, config)
    cases = [data.reader.case(int(r)) for r in data.val_rows]
    for name, sel in fit.selections.items():
        predictor = load_predictor(run.checkpoint(name))
        assert (
            predictor.meta["kind"] == "eao" and predictor.meta["head"]["name"] == fit.heads[sel.head]["name"]
        )
        np.testing.assert_allclose(predictor.predict_logits(cases), sel.val_logits, atol=1e-4)
    # a reference y_hat map [D, h, w, l] is accepted too; a wrong D is a clear error
    grid = np.asarray(cases[0]).T.reshape(8, 2, 2, 3)
    np.testing.assert_allclose(
        predictor.predict_logits([grid]), predictor.predict_logits(cases[:1]), atol=1e-5
    )
    with pytest.raises(DataError, match="D=8"):
        predictor.predict_logits([np.zeros((3, 5), np.float32)])


def test_progress_figure_columns_are_head_architectures_for_token_grids_and_norms_for_linear_ones() -> None:
    token_grid = [
        {"name": "attn-pool", "lr": 1e-4},
        {"name": "mean-linear", "lr": 1e-4},
        {"name": "attn-pool", "lr": 1e-3},
        {"name": "mean-linear", "lr": 1e-3},
    ]
    assert panel_groups(token_grid, {0, 1, 2, 3}) == [
        ("attn-pool (2 heads)", [0, 2]),
        ("mean-linear (2 heads)", [1, 3]),
    ]
    linear_grid = [{"name": "linear", "norm": n, "lr": lr} for n in ("raw", "std") for lr in (1e-3, 1e-2)]
    assert panel_groups(linear_grid, {0, 1, 2}) == [
        ("norm=raw (2 heads)", [0, 1]),
        ("norm=std (1 head)", [2]),
    ]
