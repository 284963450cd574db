"""hu-stats ROI embeddings separate the planted findings of a 200-case synthetic benchmark (issue "Done when")."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ctfm.core.labels import read_labels
from ctfm.extract.local import ExtractConfig, run_local
from ctfm.store import Store

DISEASES = ("fatty_liver", "splenomegaly")


@pytest.fixture(scope="module")
def bench200(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ctfm.data.synth import generate_benchmark
    from ctfm.masks import build_masks

    workers = min(2, os.cpu_count() or 1)
    root = generate_benchmark(
        tmp_path_factory.mktemp("bench200") / "bench", cases=200, seed=0, workers=workers
    )
    build_masks(root / "totalseg", root / "fg_masks", diseases=DISEASES, workers=workers)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("disease", DISEASES)
def test_hu_stats_roi_embeddings_separate_findings(bench200: Path, tmp_path: Path, disease: str) -> None:
    store = tmp_path / "store"
    cfg = ExtractConfig(
        extractor="hu-stats", images=bench200 / "images", store=store, masks=bench200 / "fg_masks",
        disease=disease, workers=2,
    )  # fmt: skip
    summary = run_local(cfg)
    assert summary.failed == [] and len(summary.ok) == 200
    packed = Store(store).view("hu-stats", "lp", disease).packed()
    labels = read_labels(bench200 / "labels" / f"{disease}.csv", disease)
    labels["row"] = [packed.index(c) for c in labels["case"]]
    train, val = labels[labels["split"] == "train"], labels[labels["split"] == "val"]
    assert val["label"].nunique() == 2
    X = np.asarray(packed.X)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    clf.fit(X[train["row"]], train["label"])
    auroc = roc_auc_score(val["label"], clf.predict_proba(X[val["row"]])[:, 1])
    assert auroc >= 0.85, f"{disease}: val AUROC {auroc:.3f}"
