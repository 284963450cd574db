"""Leaderboard ranks against hand-computed examples, Kendall's tau against scipy, bootstrap bookkeeping."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from ctfm.evaluate.leaderboard import (
    DiseaseScores,
    aggregate,
    aggregate_then_rank,
    average_ranks,
    build_leaderboard,
    kendall_tau_b,
)

METRICS = ["balanced_acc", "auroc"]


def test_ranks_hand_computed() -> None:
    nan = np.nan
    # [disease, metric, model] for models A, B, C
    values = np.array(
        [
            [[0.8, 0.7, 0.7], [0.9, 0.95, 0.6]],
            [[0.6, 0.9, nan], [0.7, 0.7, 0.7]],
        ]
    )
    ranks, mean_rank, final = aggregate(values, METRICS)
    # d0 bal: A 1, B/C tie 2.5; d0 auroc: B 1, A 2, C 3; d1 bal: B 1, A 2, C missing 3; d1 auroc: all tie 2.
    np.testing.assert_array_equal(ranks[0, 0], [1, 2.5, 2.5])
    np.testing.assert_array_equal(ranks[0, 1], [2, 1, 3])
    np.testing.assert_array_equal(ranks[1, 0], [2, 1, 3])
    np.testing.assert_array_equal(ranks[1, 1], [2, 2, 2])
    np.testing.assert_allclose(mean_rank, [7 / 4, 6.5 / 4, 10.5 / 4])
    np.testing.assert_array_equal(final, [2, 1, 3])
    # Aggregate-then-rank: means over diseases bal A .7 B .8 C missing; auroc A .8 B .825 C .65.
    np.testing.assert_array_equal(aggregate_then_rank(values, METRICS), [2, 1, 3])


def test_lower_is_better_and_ties() -> None:
    np.testing.assert_array_equal(
        average_ranks(np.array([0.1, 0.3, 0.1]), higher_is_better=False), [1.5, 3, 1.5]
    )
    np.testing.assert_array_equal(average_ranks(np.array([0.3, np.nan, 0.3, np.nan])), [1.5, 3.5, 1.5, 3.5])
    # One ulp apart is a tie: different float paths to the same value must not decide a rank.
    np.testing.assert_array_equal(average_ranks(np.array([0.7, 0.7 + 1e-16])), [1.5, 1.5])


def test_leaderboard_from_predictions_hand_computed() -> None:
    y = np.array([0, 0, 1, 1])
    x = np.array([0.1, 0.6, 0.7, 0.9])  # pred 0,1,1,1: balanced acc 0.75; AUROC 1
    z = np.array([0.4, 0.3, 0.2, 0.8])  # pred 0,0,0,1: balanced acc 0.75; AUROC 0.5
    probs = np.stack([np.stack([1 - p, p], axis=1) for p in (x, z)])
    lb = build_leaderboard([DiseaseScores("d", list("abcd"), y, probs)], ["X", "Y"], METRICS, n_boot=0)
    np.testing.assert_allclose(lb.values[0], [[0.75, 0.75], [1.0, 0.5]])
    np.testing.assert_array_equal(lb.ranks[0], [[1.5, 1.5], [1, 2]])
    np.testing.assert_array_equal(lb.final_rank, [1, 2])
    assert lb.table()["model"].tolist() == ["X", "Y"]


def test_kendall_tau_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, 7).astype(float)
    ys = rng.integers(0, 4, (20, 7)).astype(float)
    ours = kendall_tau_b(x, ys)
    for b in range(20):
        want = kendalltau(x, ys[b]).statistic
        assert ours[b] == pytest.approx(want, abs=1e-12, nan_ok=True)


def test_bootstrap_bookkeeping_and_seed() -> None:
    rng = np.random.default_rng(1)
    data = []
    for d in range(3):
        y = rng.integers(0, 2, 30)
        skill = np.array([2.0, 1.0, 0.2, 0.0])[:, None]
        p = 1 / (1 + np.exp(-(skill * (2 * y - 1) + rng.normal(size=(4, 30)))))
        data.append(DiseaseScores(f"d{d}", [str(i) for i in range(30)], y, np.stack([1 - p, p], -1)))
    names = ["m0", "m1", "m2", "m3"]
    lb = build_leaderboard(data, names, METRICS, n_boot=200, seed=5)
    assert lb.boot_ranks.shape == (200, 4)
    assert lb.win_share.sum() >= 1.0 - 1e-12 and (lb.win_share <= 1).all()
    assert np.all(lb.beats + lb.beats.T <= 1 + 1e-12)
    assert np.all(np.abs(lb.tau[~np.isnan(lb.tau)]) <= 1)
    low, high = lb.rank_interval
    assert np.all(low <= high) and np.all(low >= 1) and np.all(high <= len(names))
    assert lb.final_rank[0] == 1 and lb.win_share[0] > 0.5
    again = build_leaderboard(data, names, METRICS, n_boot=200, seed=5)
    np.testing.assert_array_equal(again.boot_ranks, lb.boot_ranks)


def test_an_unreadable_eval_json_is_one_error_naming_it(tmp_path):
    from ctfm.core.errors import DataError
    from ctfm.evaluate.leaderboard import gather

    res = tmp_path / "m" / "lp" / "ascites" / "val_auroc"
    res.mkdir(parents=True)
    (res / "test_per_sample_predictions.csv").write_text("filename,label,prob_class_0,prob_class_1\n")
    (res / "test_eval.json").write_text("{bad")
    with pytest.raises(DataError, match=r"test_eval\.json: unreadable"):
        gather(tmp_path)


def test_the_stability_note_says_why_resamples_have_no_tau():
    from ctfm.evaluate.report import _stability_text

    assert _stability_text(np.zeros(0)) == "No bootstrap: stability not measured."
    text = _stability_text(np.array([1.0, 0.5, np.nan, 1.0]))
    assert "over 3 resamples (1 of 4 resamples have no tau: every model tied" in text
    assert _stability_text(np.full(3, np.nan)).startswith("Kendall's tau-b not defined: 3 of 3")


def test_leaderboard_table_prints_bracketed_names_as_they_are() -> None:
    """Entries are named 'model [strategy]': the table must not read the bracket as rich markup."""
    from rich.console import Console

    from ctfm.cli.evaluate import leaderboard_table

    frame = pd.DataFrame(
        {"model": ["hu-stats [val_loss]", "hu-stats [val_auroc]"], "rank": [1, 2], "mean_rank": [1.2, 1.8]}
    ).assign(rank_ci_low=1, rank_ci_high=2, win_share=0.5, rank_aggregate_then_rank=[1, 2])
    console = Console(record=True, width=200)
    console.print(leaderboard_table(frame, "board"))
    text = console.export_text()
    assert "hu-stats [val_loss]" in text and "hu-stats [val_auroc]" in text and "[1, 2]" in text


def _rare_disease(split: str) -> DiseaseScores:
    """40 cases, 3 positives: many plain resamples hold none."""
    rng = np.random.default_rng(3)
    y = np.array([1, 1, 1] + [0] * 37)
    p = 1 / (1 + np.exp(-(np.array([[1.5], [0.5]]) * (2 * y - 1) + rng.normal(size=(2, 40)))))
    return DiseaseScores("d", [str(i) for i in range(40)], y, np.stack([1 - p, p], -1), split=split)


def test_rank_resamples_are_stratified_unless_asked_otherwise() -> None:
    """Stratified: every resample keeps the 3 positives, so no metric is ever undefined; plain: some lose them."""
    from ctfm.evaluate.leaderboard import disease_resamples

    data = _rare_disease("test")
    idx = disease_resamples(data, 300, 0, 0)
    assert (data.labels[idx].sum(axis=1) == 3).all()
    stratified = build_leaderboard([data], ["a", "b"], METRICS, n_boot=300, seed=0)
    plain = build_leaderboard([data], ["a", "b"], METRICS, n_boot=300, seed=0, stratified=False)
    assert stratified.degenerate.sum() == 0 and plain.degenerate.min() > 0
    assert (stratified.resampling, plain.resampling) == ("stratified", "plain")


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_board_of_the_selection_split_says_so_in_every_file(tmp_path, split: str) -> None:
    import json

    from ctfm.evaluate.report import write_leaderboard

    lb = build_leaderboard([_rare_disease(split)], ["a", "b"], METRICS, n_boot=20, seed=0)
    write_leaderboard(lb, tmp_path, "board")
    note = "val: the selection split, optimistic"
    summary = json.loads((tmp_path / "leaderboard.json").read_text())
    assert (summary["split"], summary["split_note"]) == (split, note if split == "val" else "")
    for name in ("leaderboard.md", "leaderboard.html"):
        text = (tmp_path / name).read_text()
        assert (f"{note} (the heads were selected on these cases" in text) == (split == "val"), name
