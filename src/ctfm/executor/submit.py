"""Submit a job's tasks, follow them to the end (or detach), and say what each task is doing.

A task's state comes first from its own report (``running``, ``done``, ``incomplete``: some items failed and
are recorded, ``failed``: it raised or Slurm stopped it); a task that is neither queued nor reported finished
ended without saying so (killed with SIGKILL, its node lost), and Slurm's accounting, where set up, says why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from ctfm.core.errors import DataError
from ctfm.core.progress import NO_PROGRESS, Progress, tracked
from ctfm.executor import slurm
from ctfm.executor.config import ExecutorConfig
from ctfm.executor.jobs import JobDir, TaskCall, TaskState, list_jobs

logger = logging.getLogger(__name__)


def task_states(job: JobDir) -> list[TaskState]:
    """Every task of ``job``: queue first, then reports, so a task that ends in between reads as ended."""
    meta = job.meta()
    job_id = str(meta.get("slurm_id", ""))
    queued = slurm.queue_states(job_id) if job_id else {}
    accounted: dict[int, str] | None = None
    states = []
    for index, label in enumerate(meta.get("labels", [])):
        report = job.report(index) or {}
        state = TaskState(index, label, "pending", job_id=f"{job_id}_{index}", log=str(job.log_path(index)))
        state.result = report.get("result") or {}
        state.reason = str(report.get("reason", ""))
        if index in queued:
            state.state = "pending" if queued[index] in slurm.QUEUED else "running"
        elif report.get("state") in ("done", "incomplete", "failed"):
            state.state = report["state"]
        else:
            if accounted is None:
                accounted = slurm.accounting_states(job_id)
            state.state = "failed"
            why = accounted.get(index, "")
            state.reason = f"ended without a report (Slurm: {why})" if why else "ended without a report"
        states.append(state)
    return states


def refuse_active(root: Path, targets: list[str]) -> None:
    """Refuse to submit work on targets an unfinished job under ``root`` still writes: it would be done
    twice. The one line names the job and how to follow or stop it."""
    for job in list_jobs(root):
        meta = job.meta()
        shared = sorted(set(meta.get("targets", [])) & set(targets))
        if not shared or not meta.get("slurm_id"):
            continue
        if any(not s.finished for s in task_states(job)):
            raise DataError(
                f"Slurm job {meta['slurm_id']} ({job.path}) is still working on {shared[0]}: follow it with "
                f"`ctfm status {root.parents[1]}`, or stop it with `scancel {meta['slurm_id']}`"
            )


def submit_job(
    root: Path,
    name: str,
    targets: list[str],
    cfg: ExecutorConfig,
    calls: Callable[[JobDir], list[TaskCall]],
) -> JobDir:
    """Create the job folder, write its tasks (``calls`` gets the job, e.g. to name shards after it) and
    submit them as one array; the Slurm job id is logged."""
    refuse_active(root, targets)
    job = JobDir.create(root, name, targets)
    tasks = calls(job)
    if not tasks:
        raise DataError(f"{name}: nothing to submit")
    job.add_calls(tasks)
    job_id = slurm.submit(job, cfg, len(tasks))
    logger.info(
        "submitted Slurm job %s: %d task(s) of %s, logs in %s", job_id, len(tasks), name, job.path / "logs"
    )
    return job


def wait(job: JobDir, poll_s: float, progress: Progress = NO_PROGRESS) -> list[TaskState]:
    """Follow the job's tasks (finished ones told to ``progress``) until every one has finished; returns their
    states. Ctrl-C stops only the waiting: the tasks go on (``ctfm status``, ``scancel``)."""
    states = task_states(job)
    told = 0
    with tracked(progress, f"slurm {job.slurm_id} {job.meta()['name']}", len(states)) as advance:
        while True:
            finished = sum(s.finished for s in states)
            advance(finished - told)
            told = finished
            if finished == len(states):
                return states
            time.sleep(poll_s)
            states = task_states(job)
