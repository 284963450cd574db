"""The extraction stages of ``ctfm run``: built-in extractors (one shared pass per extractor) and team
containers, one stage per extractor x task x view."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctfm.core.errors import CtfmError
from ctfm.core.hashing import digest
from ctfm.core.progress import Progress
from ctfm.pipeline.stages import RunContext, Stage, StageIncomplete, StageOutcome, task_keys
from ctfm.runconfig import ContainerSpec, ExtractorSpec

if TYPE_CHECKING:
    from ctfm.extract.local import ExtractConfig, ExtractSummary

logger = logging.getLogger(__name__)


def docker_status() -> str | None:
    """None when a Docker daemon answers, else why not (one line)."""
    try:
        import docker

        docker.from_env(timeout=5).ping()
        return None
    except Exception as exc:  # any failure means no usable engine
        return f"no Docker daemon reachable ({type(exc).__name__})"


def extractor_models(
    ctx: RunContext, spec: ExtractorSpec, data_key: str, masks_key: str
) -> dict[str, dict[str, str]]:
    """Extract every task and view needed with one built-in (or plug-in) extractor: {model: {task: key}}.

    Each task x view stays a stage of its own (keys, resumption, reports); their work is one shared pass.
    """
    model = spec.model or spec.name
    tasks = spec.tasks or ctx.cfg.tasks
    shared = _SharedPass(
        {(t, v): _extract_config(ctx, spec, model, t, v) for t in tasks for v in ctx.views},
        ctx.progress,
        ctx.cfg.executor,
        ctx.out,
    )
    keys: dict[str, list[str | None]] = {}
    for task in tasks:
        for view in ctx.views:
            key = digest(
                [data_key, masks_key if view != "full" else "", spec, task, view, ctx.cfg.probe.device]
            )
            stage = Stage(f"extract/{model}/{task}/{view}", key, _extract_runner(shared, task, view))
            keys.setdefault(task, []).append(ctx.run_one(stage))
    return {model: task_keys(keys)}


def _extract_config(ctx: RunContext, spec: ExtractorSpec, model: str, task: str, view: str) -> ExtractConfig:
    from ctfm.extract.local import ExtractConfig

    return ExtractConfig(
        extractor=spec.name,
        images=ctx.data_root / "images",
        store=ctx.store_root,
        task=task,
        masks=None if view == "full" else ctx.masks_root,
        disease=None if view == "full" else view,
        model=model,
        workers=spec.workers,
        batch_size=spec.batch_size,
        device=ctx.cfg.probe.device,
        weights=spec.weights,
        seed=ctx.cfg.seed,
    )


def _extract_runner(shared: _SharedPass, task: str, view: str) -> Callable[[], str]:
    def run() -> str:
        ran = shared.ran
        summary = shared.summary(task, view)
        for case, error in summary.failed:
            logger.warning("%s %s: %s", summary.view, case, error)
        detail = (
            f"{summary.view}: {len(summary.ok)} extracted, {len(summary.skipped)} already stored, "
            f"{len(summary.failed)} failed"
            + (f", {len(summary.changed)} redone (inputs changed)" if summary.changed else "")
            + (" (in that pass)" if ran else f" (one pass for {len(shared.configs)} task x view stages)")
        )
        if summary.failed:
            raise StageIncomplete(detail)
        return detail

    return run


def container_models(
    ctx: RunContext, spec: ContainerSpec, data_key: str, masks_key: str
) -> dict[str, dict[str, str]]:
    """Run one container spec over every task and view: {team: {task: key}}."""
    label = str(spec.folder or spec.image or "baseline")
    why = docker_status()
    if why is not None:
        logger.warning("containers %s: skipped: %s", label, why)
        ctx.result.outcomes.append(StageOutcome(f"containers/{label}", "skipped", detail=why))
        return {}
    teams: dict[str, dict[str, list[str | None]]] = {}  # team -> task -> stage keys
    for task in spec.tasks or ctx.cfg.tasks:
        try:
            names, source = _container_source(ctx, spec, task)
        except CtfmError as exc:
            ctx.result.outcomes.append(StageOutcome(f"containers/{label}/{task}", "failed", detail=str(exc)))
            logger.error("containers %s %s: %s", label, task, exc)
            continue
        for view in ctx.views:
            key = digest([data_key, masks_key if view != "full" else "", spec, source, task, view])
            stage = Stage(
                f"containers/{'+'.join(names)}/{task}/{view}",
                key,
                _container_runner(ctx, spec, task, view),
            )
            done = ctx.run_one(stage)
            for team in names:
                teams.setdefault(team, {}).setdefault(task, []).append(done)
    return {team: task_keys(keys) for team, keys in teams.items()}


def _container_source(ctx: RunContext, spec: ContainerSpec, task: str) -> tuple[list[str], str]:
    """(team names, fingerprint of the images) of one container spec for one task."""
    from ctfm.extract.containers import discover_tarballs, team_from_tag

    if spec.folder is not None:
        tarballs = discover_tarballs(spec.folder, task)
        return list(tarballs), digest(
            [[(t, p.stat().st_size, p.stat().st_mtime) for t, p in tarballs.items()]]
        )
    tag = spec.image or _baseline_tag(ctx)
    return [team_from_tag(tag)], tag


def _baseline_tag(ctx: RunContext) -> str:
    """The baseline container's tag, built (offline) the first time a stage needs it."""
    if ctx.baseline is None:
        from ctfm.extract.images import build_baseline_image

        ctx.baseline = build_baseline_image(log=logger.info)
    return ctx.baseline


def _container_runner(ctx: RunContext, spec: ContainerSpec, task: str, view: str) -> Callable[[], str]:
    def run() -> str:
        from ctfm.extract.containers import ContainerRunOptions, RunSettings, run_containers

        options = ContainerRunOptions(
            ctx.store_root,
            ctx.data_root / "images",
            RunSettings(task=task, memory=spec.memory, timeout_per_case=spec.timeout_per_case),
            tarballs=spec.folder,
            tags=() if spec.folder is not None else (spec.image or _baseline_tag(ctx),),
            masks=None if view == "full" else ctx.masks_root / view,
            view=view,
        )
        reports = run_containers(options, log=logger.info, progress=ctx.progress)
        parts = []
        for r in reports:
            if r.error:
                logger.warning("container %s: not run: %s", r.team, r.error)
                parts.append(f"{r.team}: not run")
                continue
            parts.append(
                f"{r.team}: {r.count('ok')} ok, {r.count('failed')} failed, {r.count('timeout')} timeout"
            )
        detail = f"{task}/{view}: " + "; ".join(parts)
        if not all(r.all_ok for r in reports):
            raise StageIncomplete(detail)
        return detail

    return run


class _SharedPass:
    """Every task and view of one extractor, extracted in one pass the first time a stage needs any of them
    (``run_local_many``: each image is read once). Later stages of the extractor take their summary from it;
    views whose stage was already up to date cost the pass a stamp check per case."""

    def __init__(
        self, configs: dict[tuple[str, str], ExtractConfig], progress: Progress, executor: Any, out: Path
    ) -> None:
        self.configs, self.progress = configs, progress
        self.executor, self.out = executor, out  # ExecutorConfig; out holds the cluster jobs
        self._done: dict[tuple[str, str], ExtractSummary] | Exception | None = None

    @property
    def ran(self) -> bool:
        """Whether an earlier stage already ran the pass."""
        return self._done is not None

    def _extract(self) -> list[ExtractSummary]:
        from ctfm.extract.local import run_local_many

        if self.executor.kind != "slurm":
            return run_local_many(list(self.configs.values()), progress=self.progress)
        from ctfm.executor.extract import extract_on_cluster
        from ctfm.executor.jobs import jobs_root

        run = extract_on_cluster(
            list(self.configs.values()), self.executor, jobs_root(self.out), progress=self.progress
        )
        return run.summaries

    def summary(self, task: str, view: str) -> ExtractSummary:
        if self._done is None:
            try:
                summaries = self._extract()
            except Exception as exc:  # every stage of the extractor reports it, none retries it
                self._done = exc
                raise
            self._done = dict(zip(self.configs, summaries, strict=True))
        if isinstance(self._done, Exception):
            raise self._done
        return self._done[(task, view)]
