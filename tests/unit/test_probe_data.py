"""Labels + store -> arrays: missing cases, splits and folds, few-shot draws, run planning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctfm.core.errors import DataError, StoreError
from ctfm.probe.data import few_shot, load_disease
from ctfm.probe.options import plan_runs
from ctfm.probe.runner import select_rows
from probe_fixtures import MODEL, write_bench


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_data")
    return write_bench(
        root, n=60, dim=6, n_val=15, n_test=5, missing=("synth_0002", "synth_0041", "synth_0058")
    )


def test_missing_embeddings_are_reported_not_dropped(bench):
    store, labels = bench
    data = load_disease(store, MODEL, labels, "fatty_liver")
    assert data.missing_in() == ["synth_0002", "synth_0041"]  # train and val cases
    assert data.missing_in(("test",)) == ["synth_0058"]
    assert data.missing["synth_0002"] == "failed: container crashed"
    assert data.missing["synth_0041"] == "absent"
    assert len(data.table) == 57 and "synth_0002" not in set(data.table["case"])
    assert data.store_key["view"] == "fatty_liver" and len(data.store_key["manifest_checksum"]) == 64
    split = data.split()
    x, y = data.arrays(split.train)
    assert x.shape == (39, 6) and x.dtype == np.float32 and len(y) == 39
    assert len(split.val) == 14


def test_non_roi_disease_reads_the_full_view(tmp_path):
    store, labels = write_bench(tmp_path, disease="ascites", n=20, dim=4, n_val=6, n_test=2)
    data = load_disease(store, MODEL, labels, "ascites")
    assert data.store_key["view"] == "full" and len(data.table) == 20


def test_no_embeddings_at_all_is_a_store_error(bench, tmp_path):
    _, labels = bench
    with pytest.raises(StoreError, match="no ok lp embeddings"):
        load_disease(tmp_path / "empty", MODEL, labels, "fatty_liver")


def test_folds_select_their_own_val(bench):
    store, labels = bench
    data = load_disease(store, MODEL, labels, "fatty_liver")
    for k in range(5):
        split = data.split(f"fold{k}")
        assert set(data.table["fold" + str(k)].iloc[split.val]) == {"val"}
        assert len(split.train) + len(split.val) == len(data.table)
    with pytest.raises(DataError, match="no column 'fold9'"):
        data.split("fold9")


def test_one_class_in_val_is_a_clear_error(tmp_path):
    store, labels = write_bench(tmp_path, n=30, dim=4, n_val=6, n_test=0)
    csv = labels / "fatty_liver.csv"
    table = pd.read_csv(csv)
    table.loc[table["split"] == "val", "fatty_liver"] = 1
    table.to_csv(csv, index=False)
    data = load_disease(store, MODEL, labels, "fatty_liver")
    with pytest.raises(DataError, match="val cases of column 'split' all have class \\[1\\]"):
        data.split()


def test_few_shot_draws_k_per_class_without_replacement():
    y = np.array([0] * 10 + [1] * 5 + [2] * 7)
    picked = few_shot(y, 4, np.random.default_rng(0))
    assert len(picked) == 12 and len(set(picked)) == 12
    assert np.bincount(y[picked]).tolist() == [4, 4, 4]
    assert not np.array_equal(picked, few_shot(y, 4, np.random.default_rng(1)))
    with pytest.raises(DataError, match="class 1 has only 5"):
        few_shot(y, 6, np.random.default_rng(0))


def test_run_plan_counts_and_tags():
    runs = plan_runs("split", 5, [0, 1, 2], 0, 1)
    assert len(runs) == 15 and runs[0].tag == "fold0_seed0" and runs[-1].split_column == "fold4"
    few = plan_runs("split", 0, [7], 8, 3)
    assert [r.tag for r in few] == ["shots8-try0", "shots8-try1", "shots8-try2"]
    assert plan_runs("split", 0, [42], 0, 1)[0].tag == ""


def test_selected_rows_have_the_right_sizes(bench):
    store, labels = bench
    data = load_disease(store, MODEL, labels, "fatty_liver")
    runs = plan_runs("split", 0, [0, 1], 3, 2)
    draws = []
    for spec in runs:
        train, val = select_rows(data, spec)
        assert len(train) == 6 and len(val) == 14
        assert np.bincount(data.table["label"].to_numpy()[train]).tolist() == [3, 3]
        draws.append(tuple(train))
    assert len(set(draws)) == 4  # every (seed, try) draws differently
    assert tuple(select_rows(data, runs[0])[0]) == draws[0]  # and reproducibly
    for spec in plan_runs("split", 5, [0], 0, 1):
        train, val = select_rows(data, spec)
        assert len(train) + len(val) == 57


def test_a_fold_typo_or_a_class_unseen_in_train_is_a_clear_error(tmp_path):
    """Both used to train quietly: a mistyped fold cell dropped its case from val; a val-only class gave
    the head an output it never learned."""
    store, labels = write_bench(tmp_path, n=40, dim=4, n_val=10, n_test=4)
    csv = labels / "fatty_liver.csv"
    table = pd.read_csv(csv, dtype=str)
    good = table.copy()
    table.loc[0, "fold0"] = "validation"
    table.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"unknown fold0 value\(s\) \['validation'\]"):
        load_disease(store, MODEL, labels, "fatty_liver").split("fold0")
    good.loc[good.index[good["split"] == "val"][0], "fatty_liver"] = "2"
    good.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"class\(es\) \[2\] of the val cases .* never appear in train"):
        load_disease(store, MODEL, labels, "fatty_liver").split()
    with pytest.raises(DataError, match=r"--labels takes the folder of <disease>\.csv files, not one file"):
        load_disease(store, MODEL, csv, "fatty_liver")
