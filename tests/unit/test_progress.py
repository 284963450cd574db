"""The library's plain progress reports: one task per call, every step told, the task ended however it ends."""

from __future__ import annotations

import pytest

from ctfm.core.pool import run_jobs
from ctfm.core.progress import NO_PROGRESS, tracked
from progress_support import Recorder


def square(x: int) -> int:
    return x * x


def fail_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("two")
    return x


@pytest.mark.parametrize("workers", [1, 2])
def test_run_jobs_returns_every_result_and_tells_each_step(workers: int) -> None:
    seen = Recorder()
    results = list(run_jobs(square, [1, 2, 3, 4], workers, seen, "squares"))
    assert sorted(results) == [1, 4, 9, 16]
    assert seen.events == [("start", "squares", 4), *[("advance", 1)] * 4, ("done",)]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_job_raises_and_still_ends_the_task(workers: int) -> None:
    seen = Recorder()
    with pytest.raises(ValueError, match="two"):
        list(run_jobs(fail_on_two, [1, 2, 3], workers, seen, "jobs"))
    assert seen.events[0] == ("start", "jobs", 3) and seen.events[-1] == ("done",)


def test_tracked_ends_the_task_on_error_and_no_progress_accepts_everything() -> None:
    seen = Recorder()
    with pytest.raises(RuntimeError), tracked(seen, "x", 2) as advance:
        advance(1)
        raise RuntimeError
    assert seen.events == [("start", "x", 2), ("advance", 1), ("done",)]
    with tracked(NO_PROGRESS, "y", 1) as advance:
        advance(1)
