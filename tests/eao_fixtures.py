"""Synthetic token data for the EAO tests (a finding planted in a few tokens of each positive case) and fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch


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


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is fastest, and immune to a busy machine's oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
