"""Synthetic token data for the EAO tests (a finding planted in a few tokens of each positive case) and fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ctfm.probe.eao import EAOData
from ctfm.probe.tokens import TokenReader
from ctfm.store import Store

DISEASE = "ascites"  # whole-scan disease: view "full"
DIM = 8


def planted_tokens(
    n: int,
    grids: list[tuple[int, int, int]] | None = None,
    dim: int = 16,
    k: int = 2,
    amp: float = 3.0,
    seed: int = 0,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Cases of standard-normal tokens; positives get ``amp`` along axis 0 in ``k`` random tokens only.

    The finding is local: the mean over tokens barely moves, so attention pooling should beat mean pooling.
    ``grids`` (cycled over the cases) gives each case's token grid; default 3x3x3 for all.
    """
    rng = np.random.default_rng(seed)
    grids = grids or [(3, 3, 3)]
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    cases = []
    for i in range(n):
        t = int(np.prod(grids[i % len(grids)]))
        x = rng.normal(size=(t, dim)).astype(np.float32)
        if y[i]:
            x[rng.choice(t, min(k, t), replace=False), 0] += amp
        cases.append(x)
    return cases, y


def flatten(cases: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Cases -> (flattened tokens [sum n_i, D], offsets [N+1]) as the store's packed cache holds them."""
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in cases])]).astype(np.int64)
    return np.concatenate(cases), offsets


GRIDS = [(2, 2, 3), (3, 2, 2), (2, 2, 2)]


def planted_eao_data(n: int = 96, dim: int = 8, seed: int = 0, grids: list | None = None) -> EAOData:
    """Two thirds train, one third val, of planted cases of several grid sizes (padded, masked batches)."""
    cases, y = planted_tokens(n, grids=grids or GRIDS, dim=dim, amp=4.0, seed=seed)
    half = n * 2 // 3
    return EAOData(
        TokenReader(*flatten(cases)), np.arange(half), y[:half], np.arange(half, n), y[half:], [0, 1]
    )


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is fastest, and immune to a busy machine's oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_token_bench(root: Path, n: int = 60) -> tuple[Path, Path]:
    """A store with eao token maps [D, h, w, l] (grids differ) and the disease's label CSV."""
    grids = [(2, 2, 3), (3, 2, 2), (2, 3, 3)]
    cases, y = planted_tokens(n, grids=grids, dim=DIM, amp=4.0, seed=1)
    view = Store(root / "store").view("tiny", "eao", "full")
    names = [f"case_{i:03d}" for i in range(n)]
    for i, (name, tokens) in enumerate(zip(names, cases, strict=True)):
        view.write_case(name, tokens.T.reshape(DIM, *grids[i % len(grids)]))
    split = np.where(np.arange(n) < n * 2 // 3, "train", "val")
    labels = root / "labels"
    labels.mkdir()
    pd.DataFrame({"case_id": [f"{c}.nii.gz" for c in names], "split": split, DISEASE: y}).to_csv(
        labels / f"{DISEASE}.csv", index=False
    )
    return root / "store", labels


def eval_val(cli, runs: Path, store: Path, labels: Path, out: Path) -> pd.Series:
    """Score the val split with ``ctfm eval`` (the val_balanced_acc checkpoint); its metrics row."""
    cli(
        "eval", "--runs", runs, "--store", store, "--labels", labels, "--split", "val",
        "--strategy", "val_balanced_acc", "--bootstrap", "0", "--out", out,
    )  # fmt: skip
    return pd.read_csv(out / "tiny" / "eao" / DISEASE / "val_balanced_acc" / "val_metrics.csv").iloc[0]
