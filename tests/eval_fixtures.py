"""Small real inputs for the evaluation tests: a store view, label CSVs and probe checkpoints in the probe layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DISEASE = "ascites"  # a whole-scan disease: its embeddings live in the store's `full` view
DIM = 8


def write_labels(
    root: Path, n_train: int = 10, n_val: int = 24, seed: int = 0
) -> tuple[Path, dict[str, int]]:
    """labels/<DISEASE>.csv with train and val cases; returns the folder and case -> label."""
    rng = np.random.default_rng(seed)
    labels_dir = root / "labels"
    labels_dir.mkdir(parents=True, exist_ok=True)
    rows, truth = [], {}
    for i in range(n_train + n_val):
        case = f"synth_{i:04d}"
        label = int(i % 2) if i < 4 else int(rng.integers(0, 2))
        split = "train" if i < n_train else "val"
        truth[case] = label
        rows.append(f"{split},{case}.nii.gz,{label}")  # column order differs from the reference on purpose
    (labels_dir / f"{DISEASE}.csv").write_text("split,case_id," + DISEASE + "\n" + "\n".join(rows) + "\n")
    return labels_dir, truth


def write_store(
    root: Path,
    truth: dict[str, int],
    model: str,
    skip: tuple[str, ...] = (),
    fail: tuple[str, ...] = (),
    task: str = "lp",
):
    """One `full` view: an informative embedding per case (eao: a [D, 2, 2, 2] token map), except
    skipped (absent) and failed cases."""
    from ctfm.store import Store

    view = Store(root / "store").view(model, task, "full")
    rng = np.random.default_rng(1)
    for case, label in truth.items():
        if case in skip:
            continue
        if case in fail:
            view.record_failure(case, "failed", "container exited 1")
            continue
        x = rng.normal(size=(DIM, 2, 2, 2) if task == "eao" else DIM).astype(np.float32)
        x[0] += 3.0 * (2 * label - 1)
        view.write_case(case, x)
    return view


def write_probe(
    runs: Path,
    view,
    model: str,
    feature: int,
    labels_dir: Path,
    strategy: str = "val_auroc",
    task: str = "lp",
) -> Path:
    """A finished probe folder holding one linear checkpoint that reads one feature (0 is informative);
    for eao a mean-over-tokens linear head. Its input key covers the train/val cases of ``labels_dir``, as
    `ctfm probe` records it."""
    from ctfm.core.labels import labels_path, read_labels
    from ctfm.probe.checkpoint import save_checkpoint
    from ctfm.probe.data import input_key
    from ctfm.probe.layout import DiseaseLayout

    layout = DiseaseLayout.of(runs, model, DISEASE, task)
    weight = np.zeros((2, DIM), dtype=np.float32)
    weight[1, feature], weight[0, feature] = 1.0, -1.0
    head = (
        ("linear", {"in_dim": DIM, "out_dim": 2})
        if task == "lp"
        else ("mean-linear", {"dim": DIM, "num_classes": 2})
    )
    bias = np.zeros(2, dtype=np.float32)
    if task == "eao":  # token heads store weights [members=1, in, out]
        weight, bias = weight.T[None], bias[None]
    path = save_checkpoint(
        layout.run("").checkpoint(strategy),
        kind=task,
        head_name=head[0],
        head_kwargs=head[1],
        state_dict={"linear.weight": weight, "linear.bias": bias},
        norm={"type": "raw", "mean": None, "std": None},
        grid_point={"lr": 1e-3, "wd": 1e-4, "norm": "raw"},
        feature_dim=DIM,
        classes=[0, 1],
        disease=DISEASE,
        strategy=strategy,
        store=input_key(view, read_labels(labels_path(labels_dir, DISEASE), DISEASE)),
        val_metrics={"auroc": 1.0},
        seed=42,
    )
    run = {"tag": "", "split_column": "split", "selections": {strategy: {"val_metrics": {"auroc": 1.0}}}}
    layout.summary.write_text(json.dumps({"runs": [run]}))
    layout.done.write_text("")
    return path
