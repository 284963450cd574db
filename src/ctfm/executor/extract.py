"""Extraction as Slurm array tasks: one task per shard of cases, each filling its own shard of every view.

The submitter holds the views (a local ``ctfm extract`` into them is refused meanwhile), folds in what earlier
tasks stored, plans which cases still need work exactly as a local run would, and splits them into tasks of
``cases_per_task``. Each task runs the same in-process runner (or the container runner) on its cases, writing
its shard; when all have ended the submitter merges the shards and reports per view as a local run does.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctfm.core.fsutil import exclusive_use
from ctfm.core.progress import NO_PROGRESS, Progress
from ctfm.executor.config import ExecutorConfig
from ctfm.executor.jobs import JobDir, TaskCall, TaskState
from ctfm.executor.submit import submit_job, wait
from ctfm.extract.containers.teams import ContainerRunOptions
from ctfm.extract.local import ExtractConfig, ExtractSummary
from ctfm.store import View
from ctfm.store.shards import merge_shards, shard_session


@dataclass
class ClusterRun:
    """A submitted extraction: its job, and (unless detached) the tasks' states and each view's summary."""

    job: JobDir | None
    states: list[TaskState]
    summaries: list[ExtractSummary]


def extract_shard(cfgs: list[ExtractConfig]) -> dict[str, Any]:
    """The array task: one pass of the in-process runner over this shard's cases (``cfg.shard`` set)."""
    from ctfm.extract.local import run_local_many

    summaries = run_local_many(cfgs)
    failed = [f"{s.view} {case}: {error}" for s in summaries for case, error in s.failed]
    for s in summaries:
        print(
            f"{s.view}: {len(s.ok)} ok, {len(s.failed)} failed, {len(s.skipped)} already stored", flush=True
        )
    for line in failed:
        print(f"failed {line}", flush=True)
    return {"rc": int(bool(failed)), "reason": f"{len(failed)} case(s) failed" if failed else ""}


def containers_shard(options: ContainerRunOptions) -> dict[str, Any]:
    """The array task of team containers: ``run_containers`` on this shard's cases (``settings.shard`` set)."""
    from ctfm.extract.containers import run_containers

    options = dataclasses.replace(options, settings=containers_shard_gpus(options.settings))
    reports = run_containers(options, log=lambda m: print(m, flush=True))
    bad = [r.team for r in reports if r.error or not r.all_ok]
    for r in reports:
        print(
            f"{r.team}: {r.count('ok')} ok, {r.skipped} already stored, error: {r.error or '-'}", flush=True
        )
    return {"rc": int(bool(bad)), "reason": f"teams with failures: {', '.join(bad)}" if bad else ""}


def view_targets(views: list[View]) -> list[str]:
    return [str(v.dir.resolve()) for v in views]


def extract_on_cluster(
    cfgs: list[ExtractConfig],
    executor: ExecutorConfig,
    jobs: Path,
    detach: bool = False,
    progress: Progress = NO_PROGRESS,
) -> ClusterRun:
    """Run one extraction pass (the configs of :func:`ctfm.extract.local.run_local_many`) as Slurm tasks."""
    from ctfm.extract.local import prepare_run

    cfgs = [dataclasses.replace(c, images=Path(c.images).resolve(), store=Path(c.store).resolve(),
                                masks=c.masks and Path(c.masks).resolve(),
                                weights=c.weights and Path(c.weights).resolve()) for c in cfgs]  # fmt: skip
    prepared = [prepare_run(cfg) for cfg in cfgs]
    views = [view for view, _, _ in prepared]
    with _held(views):
        todo, skipped, refused = _plan(cfgs, prepared)
        if not todo:
            return ClusterRun(None, [], _summaries(views, [], skipped, refused))

        def calls(job: JobDir) -> list[TaskCall]:
            return [
                TaskCall(
                    _label(chunk),
                    extract_shard,
                    {"cfgs": [dataclasses.replace(c, cases=chunk, shard=f"{job.key}-{i}") for c in cfgs]},
                )
                for i, chunk in enumerate(_chunks(todo, executor.cases_per_task))
            ]

        run = _submit(views, f"extract-{views[0].model}", calls, executor, jobs, detach, progress)
        run.summaries = [] if detach else _summaries(views, todo, skipped, refused)
        return run


@contextlib.contextmanager
def _held(views: list[View]) -> Iterator[None]:
    """Hold the views on this machine (a local run into them is refused) after folding in what earlier tasks
    stored, which then counts as stored."""
    with contextlib.ExitStack() as held:
        for view in views:
            held.enter_context(exclusive_use(view.dir))
            held.enter_context(shard_session(view))
        yield


def _submit(
    views: list[View],
    name: str,
    calls: Callable[[JobDir], list[TaskCall]],
    executor: ExecutorConfig,
    jobs: Path,
    detach: bool,
    progress: Progress,
) -> ClusterRun:
    """Submit the tasks writing ``views``; unless detached, wait for them and merge their shards (a detached
    job's shards are merged by the next command on the views)."""
    job = submit_job(jobs, name, view_targets(views), executor, calls)
    if detach:
        return ClusterRun(job, [], [])
    states = wait(job, executor.poll_s, progress)
    for view in views:
        merge_shards(view)
    return ClusterRun(job, states, [])


def _chunks(names: list[str], size: int) -> list[list[str]]:
    return [names[i : i + size] for i in range(0, len(names), size)]


def _label(chunk: list[str]) -> str:
    return f"{chunk[0]}..{chunk[-1]} ({len(chunk)} cases)"


def _plan(
    cfgs: list[ExtractConfig], prepared: list[tuple[View, Path | None, Any]]
) -> tuple[list[str], list[list[str]], list[list[tuple[str, str]]]]:
    """Cases some view still needs (sorted), and per view the cases already stored and those that fail
    without running (recorded by the tasks as a local run records them)."""
    from ctfm.extract.inputs import select_cases
    from ctfm.extract.local import extraction_settings, plan_items
    from ctfm.extract.preprocess import resolve_spec

    extractor = prepared[0][2]
    spec = resolve_spec(extractor.preprocess)
    selection = select_cases(cfgs[0].images, cfgs[0].cases)
    todo: set[str] = set()
    skipped, refused = [], []
    for cfg, (view, mask_dir, _) in zip(cfgs, prepared, strict=True):
        settings = extraction_settings(cfg, extractor, spec)
        items, done, _, failed = plan_items(selection, cfg, view, mask_dir, settings)
        todo.update(item.case for item in items)
        skipped.append(done)
        refused.append(failed)
    return sorted(todo), skipped, refused


def _summaries(
    views: list[View], todo: list[str], skipped: list[list[str]], refused: list[list[tuple[str, str]]]
) -> list[ExtractSummary]:
    """Each view's summary after the merge: its planned cases now stored, or failed with the reason (a case
    without any record: its task was stopped before reaching it)."""
    out = []
    for view, done, bad in zip(views, skipped, refused, strict=True):
        summary = ExtractSummary(view=f"{view.model}/{view.task}/{view.view}", skipped=done, failed=list(bad))
        records = view.records()
        for case in todo:
            if case in done:
                continue
            rec = records.get(case)
            if rec is not None and rec.status == "ok" and view.is_done(case):
                summary.ok.append(case)
            elif rec is None:
                summary.failed.append((case, "not extracted: its task stopped first (ctfm status); rerun"))
            elif rec.status != "ok":
                summary.failed.append((case, rec.error or rec.status))
        out.append(summary)
    return out


def containers_shard_gpus(settings: Any) -> Any:
    """A task's container settings with the GPUs Slurm allocated it (``--gres``: host indices, as Docker's
    ``--gpus device=`` takes them), one container per GPU."""
    import os

    allocated = os.environ.get("SLURM_JOB_GPUS") or os.environ.get("SLURM_STEP_GPUS") or ""
    gpus = tuple(g for g in allocated.split(",") if g.strip())
    return dataclasses.replace(settings, gpus=gpus) if gpus else settings


def containers_on_cluster(
    options: ContainerRunOptions,
    executor: ExecutorConfig,
    jobs: Path,
    detach: bool = False,
    progress: Progress = NO_PROGRESS,
) -> ClusterRun:
    """Team containers as Slurm tasks: every team over one shard of cases per task, with the same runner and
    limits as locally; each task loads the tarballs on its node. Returns the tasks' states (team tables are
    in their logs); the views are merged when all have ended."""
    from ctfm.extract.containers.tarballs import discover_tarballs, team_from_tag
    from ctfm.extract.inputs import select_cases
    from ctfm.store import Store

    options = options.resolved()
    task = options.settings.task
    teams = list(discover_tarballs(options.tarballs, task)) if options.tarballs else []
    teams += [team_from_tag(tag) for tag in options.tags]
    views = [Store(options.store).view(team, task, options.view) for team in teams]
    selected, refused = select_cases(options.images, options.cases)
    names = [case for case, _ in selected] + sorted(refused)

    def shard(chunk: list[str], name: str) -> ContainerRunOptions:
        settings = dataclasses.replace(options.settings, shard=name)
        return dataclasses.replace(options, cases=tuple(chunk), settings=settings)

    def calls(job: JobDir) -> list[TaskCall]:
        chunks = _chunks(names, executor.cases_per_task)
        return [
            TaskCall(_label(chunk), containers_shard, {"options": shard(chunk, f"{job.key}-{i}")})
            for i, chunk in enumerate(chunks)
        ]

    with _held(views):
        name = f"containers-{task}-{options.view}"
        return _submit(views, name, calls, executor, jobs, detach, progress)
