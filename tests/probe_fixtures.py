"""Small synthetic probe problems shared by the probe tests: arrays and a real store + label CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

MODEL = "toy-model"


def planted(n: int, dim: int, signal: float = 2.0, seed: int = 0, classes: int = 2):
    """Unit-noise features whose class means differ by ``2 * signal`` along one random direction."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    y = np.arange(n) % classes
    rng.shuffle(y)
    x = rng.normal(size=(n, dim)) + 5.0
    x += signal * 2.0 * (y[:, None] - (classes - 1) / 2.0) * direction[None, :]
    return x.astype(np.float32), y.astype(np.int64)


def split_arrays(x, y, n_train: int):
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def write_bench(
    root: Path,
    disease: str = "fatty_liver",
    n: int = 80,
    dim: int = 12,
    n_val: int = 24,
    n_test: int = 8,
    missing: tuple[str, ...] = (),
    signal: float = 2.0,
    seed: int = 0,
) -> tuple[Path, Path]:
    """A store (synthetic embeddings via the store API) and a labels folder with split and fold columns.

    Cases in ``missing`` are in the CSV but get no embedding (one is recorded as failed)."""
    from ctfm.core.benchmark import load_benchmark
    from ctfm.store import Store

    x, y = planted(n, dim, signal, seed)
    cases = [f"synth_{i:04d}" for i in range(n)]
    split = ["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    table = pd.DataFrame({"case_id": [c + ".nii.gz" for c in cases], "split": split, disease: y})
    for k in range(5):
        fold_val = (np.arange(n) % 5) == k
        table[f"fold{k}"] = np.where(fold_val, "val", "train")
    labels = root / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    table.to_csv(labels / f"{disease}.csv", index=False)
    view = Store(root / "store").view(MODEL, "lp", load_benchmark().view_of(disease))
    for i, case in enumerate(cases):
        if case in missing:
            continue
        view.write_case(case, x[i])
    if missing:
        view.record_failure(missing[0], "failed", error="container crashed")
    return root / "store", labels
