"""Run independent jobs in a process pool (or in this process for one worker), telling a progress."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

from ctfm.core.progress import Progress, tracked

J = TypeVar("J")
R = TypeVar("R")


def run_jobs(
    fn: Callable[[J], R], jobs: Sequence[J], workers: int, progress: Progress, label: str
) -> Iterator[R]:
    """``fn(job)`` for every job, yielded as each finishes (in order with one worker). ``fn`` and the jobs
    must pickle when ``workers`` > 1; a job's exception is raised here, where its result would be."""
    if workers <= 1 or len(jobs) <= 1:
        with tracked(progress, label, len(jobs)) as advance:
            for job in jobs:
                yield fn(job)
                advance(1)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        futures = [pool.submit(fn, job) for job in jobs]  # workers fork before a progress thread starts
        with tracked(progress, label, len(jobs)) as advance:
            for future in as_completed(futures):
                yield future.result()
                advance(1)
