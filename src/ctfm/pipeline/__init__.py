"""``ctfm run`` / ``ctfm demo``: every stage from data to leaderboard, resumable.

Modules: ``stages`` (a stage, its stamp, the run's context and driver), ``inputs`` (data, masks),
``extraction`` (extractors and containers), ``scoring`` (probe, eval, leaderboard); this module runs them in
order (:func:`run_pipeline`).

Each unit of work (the data, the masks, one extractor x task x view, one probe, ...) is a :class:`Stage` with a
key: a fingerprint of its settings and of the keys of the stages it reads. A stage's key is stamped under
``<output>/.ctfm/stages/`` once it finishes, so a rerun skips every stage whose key is unchanged. A stage
interrupted before its stamp is simply run again, and the stage itself resumes (extraction skips stored cases,
probing skips finished diseases). A stage whose key changed runs again, and so does everything downstream of
it, because their keys include its key; each redoes only what changed (extraction compares every stored case's
input stamps and settings, masks their digests, probes their options, labels and embeddings).

Layout under the output root::

    data/         the synthetic benchmark (when generated)
    masks/        per-disease foreground masks (ctfm masks)
    store/        the embedding store (ctfm extract)
    probes/<task>/       probe runs (ctfm probe lp / eao)
    eval/<task>/         per-head metrics and per-sample predictions (ctfm eval)
    reference/<task>/<model>/<disease>/results/   the same files as the reference's scorer and organizer
                         scripts read them (their --csv_root: reference/<task>/<model>)
    leaderboard/<task>/  leaderboard.csv / .md / .html (ctfm leaderboard)
    config.resolved.yaml the configuration that produced all this
"""

from __future__ import annotations

import yaml

from ctfm.core.fsutil import exclusive_use, write_text_atomic
from ctfm.core.progress import NO_PROGRESS, Progress
from ctfm.pipeline.extraction import container_models, extractor_models
from ctfm.pipeline.inputs import data_stage, masks_stage
from ctfm.pipeline.scoring import leaderboard_stage, probe_and_eval
from ctfm.pipeline.stages import RunContext, RunResult
from ctfm.runconfig import RunConfig

__all__ = ["RunResult", "run_pipeline", "run_stages"]


def run_stages(ctx: RunContext) -> RunResult:
    """Run every stage in order, resuming from the stamps; see :attr:`RunResult.failed` afterwards."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(ctx.out / "config.resolved.yaml", yaml.safe_dump(ctx.cfg.to_dict(), sort_keys=False))
    data_key = ctx.run_one(data_stage(ctx))
    if data_key is None:
        return ctx.result
    masks_key = ctx.run_one(masks_stage(ctx, data_key)) if ctx.roi else ""
    if masks_key is None:
        return ctx.result
    models: dict[str, dict[str, str]] = {}  # store model -> task -> key of its embeddings
    for spec in ctx.cfg.extractors:
        models.update(extractor_models(ctx, spec, data_key, masks_key))
    for spec in ctx.cfg.containers:
        models.update(container_models(ctx, spec, data_key, masks_key))
    for task in ctx.cfg.tasks:
        eval_keys = [
            probe_and_eval(ctx, task, model, keys[task]) for model, keys in models.items() if task in keys
        ]
        if any(eval_keys):
            ctx.run_one(leaderboard_stage(ctx, task, [k for k in eval_keys if k]))
    return ctx.result


def run_pipeline(cfg: RunConfig, progress: Progress = NO_PROGRESS) -> RunResult:
    """Run (or resume) everything ``cfg`` describes; see the module docstring for the layout. A second run on
    the same output folder is refused while this one runs."""
    ctx = RunContext(cfg, progress)
    with exclusive_use(ctx.out / ".ctfm"):
        return run_stages(ctx)
