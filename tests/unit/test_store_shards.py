"""Per-task shards of a store view and their merge: tasks never touch the view, the merge is idempotent and
survives being killed, a later result of a case wins, killed tasks lose only unfinished cases."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ctfm.store import CaseRecord, Store
from ctfm.store.shards import (
    CLOSED,
    SHARDS,
    ShardView,
    done_in_shard,
    merge_shards,
    shard_dirs,
    shard_session,
)


def _rec(case: str) -> CaseRecord:
    return CaseRecord(case=case, status="ok", extractor="test", extractor_version="1")


def _arr(i: int) -> np.ndarray:
    return np.full(4, float(i), np.float32)


def test_task_writes_only_its_shard_and_sees_the_view(tmp_path: Path) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    view.write_case("a", _arr(1), _rec("a"))
    before = view.manifest_path.read_bytes()
    shard = ShardView(view, "job-0")
    shard.write_case("b", _arr(2), _rec("b"))
    shard.record_failure("c", "failed", "broken")

    assert view.manifest_path.read_bytes() == before  # the view is untouched
    assert not view.case_path("b").exists()
    assert shard.case_path("b").parent == tmp_path / "m" / "lp" / "full" / SHARDS / "job-0" / "embeddings"
    assert shard.is_done("a") and shard.is_done("b")  # the view's rows, with its own on top
    assert set(shard.own_records()) == {"b", "c"}
    np.testing.assert_array_equal(shard.read_case("b"), _arr(2))
    assert Store(tmp_path).view("m", "lp", "full").cases(None) == ["a"]


def test_merge_folds_shards_and_is_idempotent(tmp_path: Path) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    for i, shard_id in enumerate(("j-0", "j-1")):
        with shard_session(ShardView(view, shard_id)):
            ShardView(view, shard_id).write_case(f"c{i}", _arr(i), _rec(f"c{i}"))
    ShardView(view, "j-1").record_failure("bad", "timeout", "too slow")

    report = merge_shards(view)
    assert (report.merged, report.removed, report.lost) == (3, 2, [])
    assert view.cases("ok") == ["c0", "c1"] and view.record("bad").status == "timeout"
    np.testing.assert_array_equal(view.read_case("c1"), _arr(1))
    assert view.record("c1").file == "embeddings/c1.h5"
    assert shard_dirs(view) == []

    lines = view.manifest_path.read_text().count("\n")
    again = merge_shards(view)
    assert again.merged == 0 and view.manifest_path.read_text().count("\n") == lines


def test_merge_killed_after_the_rename_is_finished_by_the_next(tmp_path: Path) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    shard = ShardView(view, "j-0")
    shard.write_case("a", _arr(3), _rec("a"))
    view.embeddings_dir.mkdir()
    os.replace(shard.case_path("a"), view.case_path("a"))  # as a merge killed before its manifest row

    report = merge_shards(view)
    assert report.merged == 1 and report.lost == []
    np.testing.assert_array_equal(view.read_case("a"), _arr(3))
    assert report.open == 1  # not closed and recently written: its task may still write


def test_a_later_view_row_wins_and_a_lost_file_is_not_done(tmp_path: Path) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    shard = ShardView(view, "j-0")
    shard.write_case("a", _arr(1), _rec("a"))
    shard.write_case("gone", _arr(2), _rec("gone"))
    shard.case_path("gone").unlink()
    view.write_case("a", _arr(9), _rec("a"))  # a later local run of the same case

    report = merge_shards(view)
    np.testing.assert_array_equal(view.read_case("a"), _arr(9))
    assert report.lost == ["gone"] and view.record("gone") is None


def test_a_local_run_merges_first_and_a_session_closes_its_shard(tmp_path: Path) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    shard = ShardView(view, "j-0")
    with shard_session(shard):
        shard.write_case("a", _arr(1), _rec("a"))
        assert not (shard.shard_dir / CLOSED).exists()
    assert (shard.shard_dir / CLOSED).is_file()
    with shard_session(view):
        assert view.cases("ok") == ["a"]


def test_shard_names_are_checked(tmp_path: Path) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    with pytest.raises(Exception, match="safe file name"):
        ShardView(view, "../x")


def test_under_force_a_requeued_task_redoes_only_what_its_shard_has_not_finished(tmp_path: Path) -> None:
    view = Store(tmp_path).view("m", "lp", "full")
    view.write_case("a", _arr(1), _rec("a"))
    shard = ShardView(view, "job-0")
    shard.write_case("b", _arr(2), _rec("b"))
    shard.record_failure("c", "failed", "broken")
    assert not done_in_shard(shard, "a")  # stored before the job: --force redoes it
    assert done_in_shard(ShardView(view, "job-0"), "b")  # the first attempt's, seen by the requeued task
    assert not done_in_shard(shard, "c") and not done_in_shard(shard, "d")
    assert not done_in_shard(view, "a")  # a local run: --force redoes everything
