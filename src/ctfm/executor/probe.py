"""Probes as Slurm array tasks: one task per (disease, model), each training into its own disease folder.

Disease folders never share a file, so the tasks need no shard: each holds its folder as a local run does.
The submitter packs every view the tasks read first, so no two tasks build the same packed cache at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

from ctfm.core.progress import NO_PROGRESS, Progress
from ctfm.executor.config import ExecutorConfig
from ctfm.executor.jobs import JobDir, TaskCall, TaskState
from ctfm.executor.submit import submit_job, wait
from ctfm.probe.options import ProbeOptions
from ctfm.probe.runner import DiseaseOutcome
from ctfm.probe.stage import ProbeResult


def probe_disease(options: ProbeOptions) -> dict[str, Any]:
    """The array task: :func:`~ctfm.probe.stage.run_probe` on one disease; its outcome goes back in the task's
    report."""
    from ctfm.probe.stage import run_probe

    result = run_probe(options)
    for o in result.failed:
        print(f"failed {o.disease}: {o.error}", flush=True)
    return {
        "rc": int(bool(result.failed)),
        "reason": "; ".join(f"{o.disease}: {o.error}" for o in result.failed),
        "outcomes": [dataclasses.asdict(o) for o in result.outcomes],
    }


def outcomes_of(states: list[TaskState]) -> list[DiseaseOutcome]:
    """The per-disease outcomes the tasks reported; a task that reported none is its disease's failure."""
    out = []
    for state in states:
        reported = state.result.get("outcomes")
        if reported:
            out += [DiseaseOutcome(**o) for o in reported]
        else:
            disease = state.label.split(" ")[0]
            out.append(
                DiseaseOutcome(disease, "failed", error=f"task {state.job_id}: {state.reason} ({state.log})")
            )
    return out


def probe_on_cluster(
    options: ProbeOptions,
    executor: ExecutorConfig,
    jobs: Path,
    detach: bool = False,
    progress: Progress = NO_PROGRESS,
) -> tuple[JobDir, ProbeResult]:
    """Submit one task per disease of ``options`` and (unless ``detach``) wait; returns the job and the
    result, its outcomes in the diseases' order (none when detached)."""
    from ctfm.core.benchmark import load_benchmark
    from ctfm.core.errors import StoreError
    from ctfm.probe.layout import DiseaseLayout
    from ctfm.store import Store

    options = dataclasses.replace(
        options, store=Path(options.store).resolve(), labels=Path(options.labels).resolve(),
        out=Path(options.out).resolve(),
    )  # fmt: skip
    store = Store(options.store)
    task = options.task
    store.check_model(options.model, task)
    bench = load_benchmark()
    for view in sorted({bench.view_of(d) for d in options.diseases}):
        with contextlib.suppress(StoreError):  # the disease's task reports it, as a local run would
            store.view(options.model, task, view).packed(options.dtype)

    def calls(job: JobDir) -> list[TaskCall]:
        return [
            TaskCall(
                label=f"{disease} ({options.model}, {task})",
                fn=probe_disease,
                kwargs={"options": dataclasses.replace(options, diseases=[disease])},
            )
            for disease in options.diseases
        ]

    targets = [str(DiseaseLayout.of(options.out, options.model, d, task).dir) for d in options.diseases]
    job = submit_job(jobs, f"probe-{task}-{options.model}", targets, executor, calls)
    if detach:
        return job, ProbeResult(options, [])
    return job, ProbeResult(options, outcomes_of(wait(job, executor.poll_s, progress)))
