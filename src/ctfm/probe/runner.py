"""Probe many diseases, resumably: runs (folds x seeds x few-shot tries), outputs, summary, DONE marker.

The runner is shared by ``ctfm probe lp`` and ``ctfm probe eao``: a :class:`ProbeTask` supplies how to load a
disease, fit one run and save its checkpoints; everything else (run planning, reports, ``summary.json`` with
mean/std over runs, missing-case reporting, wandb, skipping finished diseases) lives here once.

Example:
    >>> outcomes = probe_diseases(options, linear_task(options))  # doctest: +SKIP

Callers outside :mod:`ctfm.probe` use :func:`ctfm.probe.stage.run_probe`, which picks the task.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctfm import __version__
from ctfm.core.errors import ConfigError, CtfmError, DataError
from ctfm.core.fsutil import exclusive_use, remove_partials, write_text_atomic
from ctfm.probe.data import DiseaseData, current_input_key, few_shot
from ctfm.probe.figure import FigureWorker
from ctfm.probe.layout import DiseaseLayout, RunLayout
from ctfm.probe.options import ProbeOptions, RunSpec
from ctfm.probe.report import write_reports
from ctfm.probe.training import FitResult, TrainConfig, mean_std, seed_everything

SUMMARY_METRICS = ("balanced_acc", "auroc", "acc", "f1", "ap", "sensitivity", "specificity", "loss")
logger = logging.getLogger(__name__)
OnRun = Callable[[str, str], None]  # (disease, run tag) after each finished, skipped or failed run


FitFn = Callable[[DiseaseData, np.ndarray, np.ndarray, TrainConfig], FitResult]
# Saves a run's selected heads; returns strategy -> the reference-format file written for it (run-relative).
SaveFn = Callable[[FitResult, RunLayout, DiseaseData, TrainConfig], dict[str, str]]
LoadFn = Callable[[str], DiseaseData]


@dataclass
class ProbeTask:
    """How one probe kind loads a disease, fits a run and saves the selected checkpoints."""

    name: str
    load: LoadFn
    fit: FitFn
    save: SaveFn
    settings: dict[str, Any] = field(default_factory=dict)  # what else shapes the heads (EAO: heads, dtype)


@dataclass
class DiseaseOutcome:
    """What happened to one disease: done, skipped (already DONE) or failed (with the error)."""

    disease: str
    status: str
    seconds: float = 0.0
    summary: dict[str, Any] | None = None
    error: str = ""


# Options that do not change what a probe learns: where files are, which diseases, logging, the device.
_NOT_RESULTS = {"store", "labels", "out", "diseases", "force", "retrain_changed", "wandb", "wandb_project"}
_NOT_RESULTS_TRAIN = {"device", "threads"}


def recorded_options(options: ProbeOptions, task_settings: dict[str, Any]) -> dict[str, Any]:
    """The options ``summary.json`` records: the shared ones and the task's own (EAO heads, dtype); not which
    diseases ran beside this one, so a disease's record is the same from one command or one cluster task."""
    shared = {k: v for k, v in options.describe().items() if k != "diseases"}
    return {**shared, **task_settings}


def changed_options(
    stored: dict[str, Any] | None, options: ProbeOptions, task_settings: dict[str, Any]
) -> list[str]:
    """Names of the options a finished disease was trained with that differ from ``options`` (as
    ``summary.json`` records them): skipping it would pass old results off as these options' results."""
    if not stored:
        return []
    now = json.loads(json.dumps(recorded_options(options, task_settings), default=str))
    old_train, now_train = stored.get("train") or {}, now.pop("train")
    changed = [k for k, v in now.items() if k not in _NOT_RESULTS and k in stored and stored[k] != v]
    changed += [
        k
        for k, v in now_train.items()
        if k not in _NOT_RESULTS_TRAIN and k in old_train and old_train[k] != v
    ]
    return [f"--{k.replace('_', '-')}" for k in changed]


def changed_inputs(stored: dict[str, Any] | None, current: dict[str, str]) -> list[str]:
    """What a finished disease was trained from that has changed since (``probe.data.input_key``)."""
    names = {"manifest_checksum": "its train/val embeddings", "labels": "its labels"}
    stored = stored or {}
    return [name for key, name in names.items() if key in stored and stored[key] != current.get(key)]


def _out_of_date(summary: dict[str, Any], options: ProbeOptions, task: ProbeTask, disease: str) -> str:
    """Why a finished disease must not be skipped ('' when it is current): other options or other inputs."""
    reasons = []
    if changed := changed_options(summary.get("options"), options, task.settings):
        reasons.append(f"trained with other {', '.join(changed)}")
    try:
        current = current_input_key(options.store, options.model, options.labels, disease, task.name)
    except CtfmError:
        return "; ".join(reasons)  # its inputs cannot be read now: training says why
    if changed := changed_inputs(summary.get("store"), current):
        reasons.append(f"{' and '.join(changed)} changed since it was trained")
    return "; ".join(reasons)


def select_rows(data: DiseaseData, spec: RunSpec) -> tuple[np.ndarray, np.ndarray]:
    """Train/val rows of a run; few-shot draws ``shots`` per class from train with a (seed, try) generator."""
    split = data.split(spec.split_column)
    train = split.train
    if spec.shots:
        rng = np.random.default_rng([spec.seed, spec.try_index])
        train = train[few_shot(data.table["label"].to_numpy()[train], spec.shots, rng)]
    return train, split.val


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over runs of each strategy's selected val metrics."""
    strategies = list(dict.fromkeys(s for r in runs for s in r["selections"]))
    return {
        s: {
            m: mean_std(
                [r["selections"][s]["val_metrics"].get(m, float("nan")) for r in runs if s in r["selections"]]
            )
            for m in SUMMARY_METRICS
        }
        for s in strategies
    }


def _wandb_log(
    options: ProbeOptions, task: str, disease: str, spec: RunSpec, fit: FitResult, where: Path
) -> None:
    """Per-epoch best-over-heads val metrics and each strategy's selection (head, hyper-parameters, epoch,
    val metrics); offline when no API key is configured."""
    import wandb

    mode = None
    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        mode = "offline"
    run = wandb.init(
        project=options.wandb_project,
        name=f"{options.model}-{task}-{disease}" + (f"-{spec.tag}" if spec.tag else ""),
        dir=str(where),
        config={**options.describe(), "disease": disease, "run": asdict(spec)},
        mode=mode,
        reinit=True,
    )
    hist = fit.history
    for epoch, h in hist.groupby("epoch"):
        run.log(
            {
                "epoch": int(epoch),
                "heads_training": len(h),
                "val/loss_best": float(h["val_loss"].min()),
                "val/balanced_acc_best": float(h["val_balanced_acc"].max()),
                "val/auroc_best": float(h["val_auroc"].max()),
            },
            step=int(epoch),
        )
    for name, sel in fit.selections.items():
        for k, v in sel.metrics.items():
            run.summary[f"{name}/{k}"] = v
        # the head's name and hyper-parameters: token heads of one grid share a name and differ by lr
        for k, v in fit.heads[sel.head].items():
            run.summary[f"{name}/{'head' if k == 'name' else k}"] = v
        run.summary[f"{name}/epoch"] = sel.epoch
    run.finish()


RETRAIN = ".retrain"  # a finished disease's retrain is written here, then swapped in whole


def run_disease(
    options: ProbeOptions,
    task: ProbeTask,
    disease: str,
    on_run: OnRun | None = None,
    figures: FigureWorker | None = None,
) -> DiseaseOutcome:
    """Train every run of one disease and write its outputs; skipped when DONE unless ``force``. Progress
    figures are drawn by ``figures`` when given (in another process), here otherwise."""
    layout = DiseaseLayout.of(options.out, options.model, disease, task.name)
    if layout.is_done() and not options.force:
        summary = json.loads(layout.summary.read_text()) if layout.summary.is_file() else None
        why = _out_of_date(summary or {}, options, task, disease)
        if not why:
            return DiseaseOutcome(disease, "skipped", summary=summary)
        if not options.retrain_changed:
            raise ConfigError(
                f"{layout.dir} is out of date: {why}; pass --force to retrain it, or choose another --out"
            )
        logger.info("%s: %s: retraining", disease, why)
    started = time.perf_counter()
    final = layout
    shutil.rmtree(layout.dir / RETRAIN, ignore_errors=True)  # an interrupted retrain's half-written runs
    if layout.is_done():  # forced or changed: the finished result stays usable until the new one is complete
        layout = DiseaseLayout(final.dir / RETRAIN, final.task)
    layout.dir.mkdir(parents=True, exist_ok=True)
    remove_partials(final.dir)  # what a killed run was writing
    data = task.load(disease)
    missing = data.missing_in()
    if missing:
        shown = ", ".join(missing[:10]) + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else "")
        logger.warning(
            "%s: %d train/val case(s) have no ok embedding and are left out: %s", disease, len(missing), shown
        )
    runs = []
    for spec in options.run_specs():
        train_rows, val_rows = select_rows(data, spec)
        config = options.train.with_seed(spec.seed)
        seed_everything(spec.seed)
        fit = task.fit(data, train_rows, val_rows, config)
        run_layout = layout.run(spec.tag)
        references = task.save(fit, run_layout, data, config)
        write_reports(fit, run_layout, config.monitor, figures, references)
        if options.wandb:
            _wandb_log(options, task.name, disease, spec, fit, run_layout.dir)
        runs.append(
            {
                **asdict(spec),
                "n_train": fit.num_train,
                "n_val": fit.num_val,
                "train_cases": data.cases(train_rows) if spec.shots else None,
                "epochs_run": fit.epochs_run,
                "seconds": round(fit.seconds, 3),
                "device": fit.extra.get("device", "cpu"),
                "selections": fit.summary(),
            }
        )
        logger.info(
            f"{disease}{' ' + spec.tag if spec.tag else ''}: {fit.num_train} train / {fit.num_val} val, "
            f"{len(fit.heads)} heads, {fit.epochs_run} epochs, {fit.seconds:.1f} s"
        )
        if on_run is not None:
            on_run(disease, spec.tag)
    if figures is not None:
        figures.finish()  # every output is written before the summary and DONE
    summary = {
        "disease": disease,
        "task": task.name,
        "model": options.model,
        "probe": options.probe,
        "store": data.store_key,
        "feature_dim": data.feature_dim,
        "classes": sorted(int(c) for c in np.unique(data.table["label"])),
        "missing": {
            "count": len(missing),
            "cases": {c: {"split": data.missing_split[c], "status": data.missing[c]} for c in missing},
            "test_count": len(data.missing_in(("test",))),
        },
        "runs": runs,
        "aggregate": aggregate(runs),
        "options": recorded_options(options, task.settings),
        "seconds": round(time.perf_counter() - started, 3),
        "ctfm_version": __version__,
    }
    write_text_atomic(layout.summary, json.dumps(summary, indent=2, default=str))
    write_text_atomic(layout.done, f"finished {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
    if layout != final:
        _swap_in(layout, final)
    return DiseaseOutcome(disease, "done", time.perf_counter() - started, summary)


def _swap_in(staged: DiseaseLayout, final: DiseaseLayout) -> None:
    """Replace a finished result by its completed retrain. ``DONE`` goes first and comes back last, so an
    interruption in between leaves a folder marked unfinished, never a mix marked finished. Only what the old
    result wrote (its runs, by its summary) and what the new one replaces are removed."""
    try:
        old_tags = final.run_tags()
    except DataError:
        old_tags = []
    final.done.unlink()
    for tag in old_tags:
        run = final.run(tag)
        stale = (
            [run.dir]
            if tag
            else [
                run.checkpoints_dir,
                run.reference_dir,
                run.val_report,
                run.grid_report,
                run.history,
                run.progress,
            ]
        )
        for path in stale:
            _remove(path)
    for entry in staged.dir.iterdir():
        if entry.name != staged.done.name:
            _remove(final.dir / entry.name)
            entry.rename(final.dir / entry.name)
    staged.done.rename(final.done)
    staged.dir.rmdir()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def probe_diseases(
    options: ProbeOptions,
    task: ProbeTask,
    stop_on_error: bool = False,
    on_run: OnRun | None = None,
) -> list[DiseaseOutcome]:
    """Every disease in turn; a user-fixable failure of one disease is recorded and the next one runs.
    A model the store has no embeddings of for this task is refused before any disease.

    ``on_run`` is called once per planned run (finished, skipped or failed), e.g. to advance a progress bar.
    """
    from ctfm.store import Store

    Store(options.store).check_model(options.model, task.name)
    outcomes = []
    planned = len(options.run_specs())
    with FigureWorker() as figures:
        for disease in options.diseases:
            outcomes.append(_run_one(options, task, disease, planned, on_run, stop_on_error, figures))
    return outcomes


def _run_one(
    options: ProbeOptions,
    task: ProbeTask,
    disease: str,
    planned: int,
    on_run: OnRun | None,
    stop_on_error: bool,
    figures: FigureWorker,
) -> DiseaseOutcome:
    """One disease of :func:`probe_diseases`: its outcome, with ``on_run`` called once per planned run."""
    reported: list[str] = []

    def counted(name: str, tag: str) -> None:
        reported.append(tag)
        if on_run is not None:
            on_run(name, tag)

    try:
        layout = DiseaseLayout.of(options.out, options.model, disease, task.name)
        with exclusive_use(layout.dir):  # a second probe of this disease into this folder is refused
            outcome = run_disease(options, task, disease, counted, figures)
    except CtfmError as exc:
        if stop_on_error:
            raise
        logger.error("%s: %s", disease, exc)
        outcome = DiseaseOutcome(disease, "failed", error=str(exc))
    for _ in range(planned - len(reported)):
        counted(disease, "")
    return outcome
