"""The scoring stages of ``ctfm run``: probe, eval (per model and task) and the leaderboard (per task), each
one library call (:func:`ctfm.probe.stage.run_probe`, :func:`ctfm.evaluate.stage.run_eval`,
:func:`ctfm.evaluate.stage.run_leaderboard`) with the run config's options."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ctfm.core.errors import CtfmError, DataError
from ctfm.core.hashing import digest
from ctfm.pipeline.stages import RunContext, Stage, StageIncomplete
from ctfm.runconfig import section_values

if TYPE_CHECKING:
    from ctfm.probe.options import ProbeOptions

logger = logging.getLogger(__name__)


def probe_and_eval(ctx: RunContext, task: str, model: str, embeddings_key: str) -> str | None:
    probe_key = ctx.run_one(probe_stage(ctx, task, model, embeddings_key))
    return None if probe_key is None else ctx.run_one(eval_stage(ctx, task, model, probe_key))


def probe_stage(ctx: RunContext, task: str, model: str, embeddings_key: str) -> Stage:
    settings = ctx.cfg.probe.lp if task == "lp" else ctx.cfg.probe.eao
    key = digest([embeddings_key, task, settings, ctx.cfg.probe.seeds, ctx.diseases])
    out = ctx.out / "probes" / task

    def run() -> str:
        from ctfm.probe.stage import run_probe

        options = _probe_options(ctx, task, model, out)
        if ctx.cfg.executor.kind == "slurm":
            from ctfm.executor.jobs import jobs_root
            from ctfm.executor.probe import probe_on_cluster

            _, result = probe_on_cluster(options, ctx.cfg.executor, jobs_root(ctx.out), progress=ctx.progress)
        else:
            result = run_probe(options)
        for o in result.failed:
            logger.warning("probe %s %s %s: %s", task, model, o.disease, o.error)
        detail = f"probe {task} {model}: {result.trained} disease(s) trained, {len(result.failed)} failed"
        if result.failed:
            raise (StageIncomplete if result.trained else CtfmError)(detail)
        return detail

    return Stage(f"probe/{task}/{model}", key, run)


def _probe_options(ctx: RunContext, task: str, model: str, out: Path) -> ProbeOptions:
    """The run config's probe options of ``task``, for ``model`` in this run's folders."""
    return dataclasses.replace(
        ctx.cfg.probes[task], store=ctx.store_root, model=model, labels=ctx.data_root / "labels", out=out
    )


def eval_stage(ctx: RunContext, task: str, model: str, probe_key: str) -> Stage:
    from ctfm.evaluate.results import RESULT_FORMAT

    ev = ctx.cfg.eval
    key = digest([probe_key, section_values(ev), RESULT_FORMAT])  # results of an older format are redone
    out = ctx.out / "eval" / task

    def run() -> str:
        import shutil

        from ctfm.evaluate.splits import split_warning
        from ctfm.evaluate.stage import run_eval
        from ctfm.store import sanitize_name

        reference = ctx.out / "reference" / task
        shutil.rmtree(reference / sanitize_name(model), ignore_errors=True)  # rewritten whole: none stale
        options = dataclasses.replace(
            ev,
            runs=ctx.out / "probes" / task,
            store=ctx.store_root,
            labels=ctx.data_root / "labels",
            out=out,
            seed=ctx.cfg.seed,
            reference_layout=reference,
            diseases=ctx.diseases,
            model=sanitize_name(model),
        )
        done = run_eval(options)
        if done.complaints:
            raise DataError(done.complaints[0])
        if split_warning(ev.split):
            logger.warning("warning: %s", split_warning(ev.split))
        return (
            f"eval {task} {model}: {done.heads} head(s) on {ev.split}, {done.failed_cases} case(s) scored "
            "as failures"
        )

    return Stage(f"eval/{task}/{model}", key, run)


def leaderboard_stage(ctx: RunContext, task: str, eval_keys: list[str]) -> Stage:
    lb = ctx.cfg.leaderboard
    strategy = ctx.cfg.eval.strategies[0]
    key = digest([eval_keys, section_values(lb), strategy])
    out = ctx.out / "leaderboard" / task
    ctx.result.leaderboards[task] = out

    def run() -> str:
        from ctfm.evaluate.splits import split_note, split_warning
        from ctfm.evaluate.stage import run_leaderboard

        split = ctx.cfg.eval.split
        options = dataclasses.replace(
            lb,
            results=ctx.out / "eval" / task,
            out=out,
            split=split,
            strategies=[strategy],
            seed=ctx.cfg.seed,
            title=f"ctfm leaderboard: task {task} ({strategy}, {split_note(split) or split})",
        )
        board = run_leaderboard(options)
        for line in [split_warning(split), *board.missing_text.splitlines()]:
            if line:
                logger.warning("warning: %s", line)
        return (
            f"leaderboard {task}: {len(board.entries)} model(s) x {len(board.diseases)} disease(s) -> {out}"
        )

    return Stage(f"leaderboard/{task}", key, run)
