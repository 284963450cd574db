"""``ctfm run`` / ``ctfm demo``: every stage from data to leaderboard, resumable.

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

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ctfm.core.errors import CtfmError, DataError
from ctfm.core.fsutil import exclusive_use, file_stamp, write_text_atomic
from ctfm.core.hashing import digest
from ctfm.core.progress import NO_PROGRESS, Progress
from ctfm.runconfig import ContainerSpec, ExtractorSpec, RunConfig

if TYPE_CHECKING:
    from ctfm.extract.local import ExtractConfig, ExtractSummary

logger = logging.getLogger(__name__)


class StageIncomplete(CtfmError):
    """A stage finished what it could; some items failed and a rerun will retry them."""


@dataclass
class Stage:
    """One resumable unit of work: ``run()`` does it (redoing only what changed) and returns a short summary."""

    name: str
    key: str
    run: Callable[[], str]


def _content_stamps(root: Path) -> list[tuple[str, int, int]]:
    """Stamps of a user's benchmark folder (labels, images, label maps): an edited label or a replaced
    volume changes the data key, so every later stage looks again (and redoes only what changed)."""
    files = [
        f for sub in ("labels", "images", "totalseg") for f in sorted((root / sub).rglob("*")) if f.is_file()
    ]
    return [(str(f.relative_to(root)), *file_stamp(f)[1:]) for f in files]


@dataclass
class StageOutcome:
    name: str
    status: str  # done | up-to-date | incomplete | skipped | failed
    seconds: float = 0.0
    detail: str = ""


@dataclass
class RunResult:
    output: Path
    outcomes: list[StageOutcome] = field(default_factory=list)
    leaderboards: dict[str, Path] = field(default_factory=dict)  # task -> leaderboard folder

    @property
    def failed(self) -> list[StageOutcome]:
        """Stages that failed or left items to retry."""
        return [o for o in self.outcomes if o.status in ("failed", "incomplete")]


class StageStamps:
    """The record of finished stages, one small JSON file per stage, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root / ".ctfm" / "stages"

    def _path(self, name: str) -> Path:
        return self.root / (name.replace("/", "__") + ".json")

    def key(self, name: str) -> str | None:
        path = self._path(name)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text()).get("key")
        except (OSError, json.JSONDecodeError):
            return None

    def mark(self, name: str, key: str, detail: str) -> None:
        stamp = {
            "stage": name,
            "key": key,
            "detail": detail,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_text_atomic(self._path(name), json.dumps(stamp, indent=1) + "\n")


def docker_status() -> str | None:
    """None when a Docker daemon answers, else why not (one line)."""
    try:
        import docker

        docker.from_env(timeout=5).ping()
        return None
    except Exception as exc:  # any failure means no usable engine
        return f"no Docker daemon reachable ({type(exc).__name__})"


class Pipeline:
    """Plans and runs the stages of one :class:`RunConfig`."""

    def __init__(self, cfg: RunConfig, progress: Progress = NO_PROGRESS) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output)
        self.progress = progress
        self.stamps = StageStamps(self.out)
        self.result = RunResult(self.out)
        self.diseases = cfg.disease_list()
        from ctfm.core.benchmark import load_benchmark

        bench = load_benchmark()
        self.roi = [d for d in self.diseases if bench.is_roi(d)]
        self.views = sorted({bench.view_of(d) for d in self.diseases})

    # -- paths ------------------------------------------------------------------------------------------
    @property
    def data_root(self) -> Path:
        return self.cfg.data.path if self.cfg.data.path is not None else self.out / "data"

    @property
    def store_root(self) -> Path:
        return self.out / "store"

    @property
    def masks_root(self) -> Path:
        return self.out / "masks"

    # -- driver -----------------------------------------------------------------------------------------
    def _run_one(self, stage: Stage) -> str | None:
        """Run ``stage`` unless its stamp says it is up to date; the key its dependents build on, or None.

        A stage that raises :class:`StageIncomplete` did useful work but left items to retry: it is not stamped,
        its dependents run on what exists under a key of this run only (so they are redone, never taken as up
        to date, until the stage completes), and a rerun resumes it. Any other user error fails the stage and
        the stages that depend on it are skipped (None); independent ones still run.
        """
        done_key = self.stamps.key(stage.name)
        if done_key == stage.key:
            self.result.outcomes.append(StageOutcome(stage.name, "up-to-date"))
            logger.info("%s: up to date", stage.name)
            return stage.key
        logger.info("%s%s", stage.name, " (settings changed: redoing)" if done_key else "")
        start = time.perf_counter()
        try:
            detail = stage.run()
        except StageIncomplete as exc:
            self._record(stage.name, "incomplete", start, str(exc), logging.WARNING)
            return digest([stage.key, "incomplete", time.time_ns()])
        except CtfmError as exc:
            self._record(stage.name, "failed", start, str(exc), logging.ERROR)
            return None
        self.stamps.mark(stage.name, stage.key, detail)
        self._record(stage.name, "done", start, detail, logging.INFO)
        return stage.key

    def _record(self, name: str, status: str, start: float, detail: str, level: int) -> None:
        seconds = time.perf_counter() - start
        self.result.outcomes.append(StageOutcome(name, status, seconds, detail))
        text = f"{status}: {detail}" if level > logging.INFO else detail
        logger.log(level, "  %s (%.1f s)", text, seconds)

    def run(self) -> RunResult:
        """Run every stage in order, resuming from the stamps; see :attr:`RunResult.failed` afterwards."""
        self.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(
            self.out / "config.resolved.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)
        )
        data_key = self._run_one(self.data_stage())
        if data_key is None:
            return self.result
        masks_key = self._run_one(self.masks_stage(data_key)) if self.roi else ""
        if masks_key is None:
            return self.result
        models: dict[str, dict[str, str]] = {}  # store model -> task -> key of its embeddings
        for spec in self.cfg.extractors:
            models.update(self._extract_model(spec, data_key, masks_key))
        for spec in self.cfg.containers:
            models.update(self._container_models(spec, data_key, masks_key))
        for task in self.cfg.tasks:
            eval_keys = [
                self._probe_and_eval(task, model, keys[task])
                for model, keys in models.items()
                if task in keys
            ]
            if any(eval_keys):
                self._run_one(self.leaderboard_stage(task, [k for k in eval_keys if k]))
        return self.result

    # -- data and masks ---------------------------------------------------------------------------------
    def data_stage(self) -> Stage:
        synth = self.cfg.data.synth
        if synth is None:
            path = self.data_root

            def check() -> str:
                if not (path / "images").is_dir() or not (path / "labels").is_dir():
                    raise DataError(f"{path}: not a benchmark folder (needs images/ and labels/)")
                return f"using {path}"

            return Stage("data", digest(["path", str(path), _content_stamps(path)]), check)

        from ctfm.data.synth import SYNTH_VERSION, generate_benchmark

        def generate() -> str:
            generate_benchmark(
                self.data_root, synth.cases, synth.seed, synth.shape, workers=2, progress=self.progress
            )
            return f"synthetic benchmark: {synth.cases} cases (seed {synth.seed}) in {self.data_root}"

        return Stage("data", digest(["synth", synth, SYNTH_VERSION]), generate)  # new generator: new cases

    def masks_stage(self, data_key: str) -> Stage:
        margin = self.cfg.masks.margin_mm

        def build() -> str:
            from ctfm.masks import build_masks, cases_from_labels

            totalseg = self.data_root / "totalseg"
            if not totalseg.is_dir():
                raise DataError(f"{totalseg}: no TotalSegmentator label maps to build masks from")
            report = build_masks(
                totalseg,
                self.masks_root,
                diseases=self.roi,
                cases=cases_from_labels(self.data_root / "labels", self.roi),
                workers=2,
                margin_mm=margin,
                progress=self.progress,
            )
            counts = report.counts()
            if report.failed or report.flagged:
                logger.warning(
                    "masks: %d failed, %d flagged row(s), see %s",
                    len(report.failed),
                    len(report.flagged),
                    report.path,
                )
            return "masks: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))

        return Stage("masks", digest([data_key, self.roi, margin]), build)

    # -- extraction -------------------------------------------------------------------------------------
    def _extract_model(self, spec: ExtractorSpec, data_key: str, masks_key: str) -> dict[str, dict[str, str]]:
        """Extract every task and view needed with one built-in (or plug-in) extractor: {model: {task: key}}.

        Each task x view stays a stage of its own (keys, resumption, reports); their work is one shared pass.
        """
        model = spec.model or spec.name
        tasks = spec.tasks or self.cfg.tasks
        shared = _SharedPass(
            {(t, v): self._extract_config(spec, model, t, v) for t in tasks for v in self.views},
            self.progress,
            self.cfg.executor,
            self.out,
        )
        keys: dict[str, list[str | None]] = {}
        for task in tasks:
            for view in self.views:
                key = digest(
                    [data_key, masks_key if view != "full" else "", spec, task, view, self.cfg.probe.device]
                )
                stage = Stage(f"extract/{model}/{task}/{view}", key, self._extract_runner(shared, task, view))
                keys.setdefault(task, []).append(self._run_one(stage))
        return {model: _task_keys(keys)}

    def _extract_config(self, spec: ExtractorSpec, model: str, task: str, view: str) -> ExtractConfig:
        from ctfm.extract.local import ExtractConfig

        return ExtractConfig(
            extractor=spec.name,
            images=self.data_root / "images",
            store=self.store_root,
            task=task,
            masks=None if view == "full" else self.masks_root,
            disease=None if view == "full" else view,
            model=model,
            workers=spec.workers,
            batch_size=spec.batch_size,
            device=self.cfg.probe.device,
            weights=spec.weights,
            seed=self.cfg.seed,
        )

    def _extract_runner(self, shared: _SharedPass, task: str, view: str) -> Callable[[], str]:
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

    def _container_models(
        self, spec: ContainerSpec, data_key: str, masks_key: str
    ) -> dict[str, dict[str, str]]:
        """Run one container spec over every task and view: {team: {task: key}}."""
        label = str(spec.folder or spec.image or "baseline")
        why = docker_status()
        if why is not None:
            logger.warning("containers %s: skipped: %s", label, why)
            self.result.outcomes.append(StageOutcome(f"containers/{label}", "skipped", detail=why))
            return {}
        teams: dict[str, dict[str, list[str | None]]] = {}  # team -> task -> stage keys
        for task in spec.tasks or self.cfg.tasks:
            try:
                names, source = self._container_source(spec, task)
            except CtfmError as exc:
                self.result.outcomes.append(
                    StageOutcome(f"containers/{label}/{task}", "failed", detail=str(exc))
                )
                logger.error("containers %s %s: %s", label, task, exc)
                continue
            for view in self.views:
                key = digest([data_key, masks_key if view != "full" else "", spec, source, task, view])
                stage = Stage(
                    f"containers/{'+'.join(names)}/{task}/{view}",
                    key,
                    self._container_runner(spec, task, view),
                )
                done = self._run_one(stage)
                for team in names:
                    teams.setdefault(team, {}).setdefault(task, []).append(done)
        return {team: _task_keys(keys) for team, keys in teams.items()}

    def _container_source(self, spec: ContainerSpec, task: str) -> tuple[list[str], str]:
        """(team names, fingerprint of the images) of one container spec for one task."""
        from ctfm.extract.containers import discover_tarballs, team_from_tag

        if spec.folder is not None:
            tarballs = discover_tarballs(spec.folder, task)
            return list(tarballs), digest(
                [[(t, p.stat().st_size, p.stat().st_mtime) for t, p in tarballs.items()]]
            )
        tag = spec.image or self._baseline_tag()
        return [team_from_tag(tag)], tag

    def _baseline_tag(self) -> str:
        if not hasattr(self, "_baseline"):
            from ctfm.extract.images import build_baseline_image

            self._baseline = build_baseline_image(log=logger.info)
        return self._baseline

    def _container_runner(self, spec: ContainerSpec, task: str, view: str) -> Callable[[], str]:
        def run() -> str:
            from ctfm.extract.containers import ContainerRunOptions, RunSettings, run_containers

            options = ContainerRunOptions(
                self.store_root,
                self.data_root / "images",
                RunSettings(task=task, memory=spec.memory, timeout_per_case=spec.timeout_per_case),
                tarballs=spec.folder,
                tags=() if spec.folder is not None else (spec.image or self._baseline_tag(),),
                masks=None if view == "full" else self.masks_root / view,
                view=view,
            )
            reports = run_containers(options, log=logger.info, progress=self.progress)
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

    # -- probing, evaluation, leaderboard ----------------------------------------------------------------
    def _probe_and_eval(self, task: str, model: str, embeddings_key: str) -> str | None:
        probe_key = self._run_one(self.probe_stage(task, model, embeddings_key))
        return None if probe_key is None else self._run_one(self.eval_stage(task, model, probe_key))

    def probe_stage(self, task: str, model: str, embeddings_key: str) -> Stage:
        settings = self.cfg.probe.lp if task == "lp" else self.cfg.probe.eao
        key = digest([embeddings_key, task, settings, self.cfg.probe.seeds, self.diseases])
        out = self.out / "probes" / task

        def run() -> str:
            from ctfm.probe.runner import run_probe

            options, make_task, task_kwargs = self._probe_options(task, model, out)
            if self.cfg.executor.kind == "slurm":
                from ctfm.executor.jobs import jobs_root
                from ctfm.executor.probe import probe_on_cluster

                _, outcomes = probe_on_cluster(
                    options, task, make_task, task_kwargs, self.cfg.executor, jobs_root(self.out),
                    progress=self.progress,
                )  # fmt: skip
            else:
                outcomes = run_probe(options, make_task(options, **task_kwargs))
            failed = [o for o in outcomes if o.status == "failed"]
            for o in failed:
                logger.warning("probe %s %s %s: %s", task, model, o.disease, o.error)
            done = sum(o.status in ("done", "skipped") for o in outcomes)
            detail = f"probe {task} {model}: {done} disease(s) trained, {len(failed)} failed"
            if failed:
                raise (StageIncomplete if done else CtfmError)(detail)
            return detail

        return Stage(f"probe/{task}/{model}", key, run)

    def _probe_options(self, task: str, model: str, out: Path) -> tuple[Any, Any, dict[str, Any]]:
        """The probe options of ``task`` and how to build its probe task: ``make_task(options, **kwargs)``."""
        from ctfm.probe.lp_task import linear_task
        from ctfm.probe.runner import ProbeOptions
        from ctfm.probe.training import TrainConfig

        common = {
            "store": self.store_root,
            "model": model,
            "labels": self.data_root / "labels",
            "out": out,
            "diseases": self.diseases,
            "seeds": self.cfg.probe.seeds,
            "retrain_changed": True,  # the config is the truth: a disease trained otherwise is redone
        }
        if task == "lp":
            lp = self.cfg.probe.lp
            train = TrainConfig.from_benchmark(
                "linear_probe",
                epochs=lp.epochs,
                batch_size=lp.batch_size,
                patience=lp.patience,
                min_epoch=lp.min_epoch,
                device=self.cfg.probe.device,
            )
            options = ProbeOptions.defaults(
                train=train, lrs=lp.lrs, weight_decays=lp.weight_decays, norms=lp.norms, **common
            )
            return options, linear_task, {}
        from ctfm.probe.eao import eao_head_specs, eao_task

        eao = self.cfg.probe.eao
        train = TrainConfig.from_benchmark(
            "eao",
            epochs=eao.epochs,
            batch_size=eao.batch_size,
            patience=eao.patience,
            min_epoch=eao.min_epoch,
            device=self.cfg.probe.device,
        )
        specs = eao_head_specs(eao.heads)
        options = ProbeOptions.defaults(
            section="eao", train=train, probe="+".join(s.name for s in specs), lrs=eao.lrs, **common
        )
        return options, eao_task, {"specs": specs}

    def eval_stage(self, task: str, model: str, probe_key: str) -> Stage:
        from ctfm.evaluate.results import RESULT_FORMAT

        ev = self.cfg.eval
        key = digest([probe_key, ev, RESULT_FORMAT])  # results of an older format are redone
        out = self.out / "eval" / task

        def run() -> str:
            import shutil

            from ctfm.evaluate.splits import split_warning
            from ctfm.evaluate.stage import EvalOptions, run_eval
            from ctfm.store import sanitize_name

            reference = self.out / "reference" / task
            shutil.rmtree(reference / sanitize_name(model), ignore_errors=True)  # rewritten whole: none stale
            options = EvalOptions(
                runs=self.out / "probes" / task,
                store=self.store_root,
                labels=self.data_root / "labels",
                out=out,
                split=ev.split,
                strategies=ev.strategies,
                bootstrap=ev.bootstrap,
                seed=self.cfg.seed,
                reference_layout=reference,
                diseases=self.diseases,
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

    def leaderboard_stage(self, task: str, eval_keys: list[str]) -> Stage:
        lb = self.cfg.leaderboard
        strategy = self.cfg.eval.strategies[0]
        key = digest([eval_keys, lb, strategy])
        out = self.out / "leaderboard" / task
        self.result.leaderboards[task] = out

        def run() -> str:
            from ctfm.evaluate.splits import split_note, split_warning
            from ctfm.evaluate.stage import LeaderboardOptions, run_leaderboard

            split = self.cfg.eval.split
            options = LeaderboardOptions(
                results=self.out / "eval" / task,
                out=out,
                split=split,
                strategies=[strategy],
                metrics=lb.metrics,
                bootstrap=lb.bootstrap,
                seed=self.cfg.seed,
                title=f"ctfm leaderboard: task {task} ({strategy}, {split_note(split) or split})",
            )
            board = run_leaderboard(options)
            for line in [split_warning(split), *board.missing_text.splitlines()]:
                if line:
                    logger.warning("warning: %s", line)
            return f"leaderboard {task}: {len(board.entries)} model(s) x {len(board.diseases)} disease(s) -> {out}"

        return Stage(f"leaderboard/{task}", key, run)


def run_pipeline(cfg: RunConfig, progress: Progress = NO_PROGRESS) -> RunResult:
    """Run (or resume) everything ``cfg`` describes; see the module docstring for the layout. A second run on
    the same output folder is refused while this one runs."""
    pipeline = Pipeline(cfg, progress)
    with exclusive_use(pipeline.out / ".ctfm"):
        return pipeline.run()


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


def _task_keys(stage_keys: dict[str, list[str | None]]) -> dict[str, str]:
    """One embeddings key per task from its views' stage keys; a task with a failed view is left out, so
    nothing is probed on it."""
    return {task: digest(keys) for task, keys in stage_keys.items() if None not in keys}
