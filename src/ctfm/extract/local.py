"""In-process extraction: a prefetching DataLoader feeds preprocessed volumes to an extractor, the store keeps them.

Loader workers read, decompress and preprocess (MONAI) while the main process runs the model, so reading overlaps
with compute. One pass can fill several tasks and views of an extractor (:func:`run_local_many`): each image is
read once for all of them. Per-case problems (corrupt image, missing or empty mask) are recorded as failed cases
and the run goes on; cases already ok in a view are skipped unless ``force``.

Example:
    >>> cfg = ExtractConfig(extractor="hu-stats", images=Path("bench/images"), store=Path("store"))  # doctest: +SKIP
    >>> summary = run_local(cfg)  # doctest: +SKIP
    >>> summary.failed  # doctest: +SKIP
    []
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctfm.core.device import resolve_device
from ctfm.core.errors import ConfigError, CtfmError, StoreError
from ctfm.core.fsutil import exclusive_use, file_stamp
from ctfm.core.hashing import digest, sha256_file
from ctfm.core.progress import NO_PROGRESS, Progress, tracked
from ctfm.extract.inputs import case_inputs, is_current, mask_of, resolve_view, select_cases
from ctfm.store import CaseRecord, Store, View
from ctfm.store.shards import done_in_shard, open_view, shard_session


@dataclass
class ExtractConfig:
    """Everything one ``ctfm extract`` run needs (the CLI builds this; containers reuse the case selection)."""

    extractor: str
    images: Path
    store: Path
    task: str = "lp"
    masks: Path | None = None
    disease: str | None = None
    model: str | None = None  # store model name; default: the extractor name
    workers: int = 1
    batch_size: int = 1
    device: str = "auto"
    weights: Path | None = None
    force: bool = False
    cases: list[str] | None = None
    seed: int = 0
    shard: str | None = None  # a cluster task's own part of each view (ctfm.store.shards)


@dataclass
class CaseItem:
    """One case to extract: its image and (ROI views) its mask path, or why it cannot run."""

    case: str
    image: Path
    mask: Path | None = None
    error: str = ""
    inputs: str = ""  # see case_inputs
    settings: str = ""  # see extraction_settings


@dataclass
class ExtractSummary:
    """What a run did, with the time split the benchmark script reports."""

    view: str
    ok: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # stored, but their inputs changed: extracted again
    wall_seconds: float = 0.0
    read_seconds: float = 0.0
    preprocess_seconds: float = 0.0
    model_seconds: float = 0.0

    @property
    def volumes_per_second(self) -> float:
        done = len(self.ok) + len(self.failed)
        return done / self.wall_seconds if self.wall_seconds > 0 else 0.0


# -- inputs -------------------------------------------------------------------------------------------------
def plan_items(
    selection: tuple[list[tuple[str, Path]], dict[str, str]],
    cfg: ExtractConfig,
    view: View,
    mask_dir: Path | None,
    settings: str,
    hash_file: Callable[[Path], str] = sha256_file,
) -> tuple[list[CaseItem], list[str], list[str], list[tuple[str, str]]]:
    """Of the pass's ``selection`` (:func:`select_cases`): cases to run (with their mask), cases skipped
    because they are already ok, the ok cases run again because their image, mask or the extraction
    ``settings`` changed since they were stored, and the cases that fail without touching the store: a file
    that cannot be a case, or a stored case whose mask is gone (its embedding is kept: a missing input is not
    a changed one)."""
    todo, skipped, changed = [], [], []
    selected, refused = selection
    failed = list(refused.items())
    for case, image in selected:
        item = CaseItem(case=case, image=image, settings=settings)
        if mask_dir is not None:
            item.mask, item.error = mask_of(mask_dir, image)
        if item.error and view.is_done(case):
            failed.append((case, f"{item.error}; kept the embedding already stored"))
            continue
        mask = None if item.error else item.mask
        item.inputs = case_inputs(image, mask, settings)
        if cfg.force and done_in_shard(view, case):
            skipped.append(case)
            continue
        if not cfg.force and not item.error and is_current(view, case, image, mask, settings, hash_file):
            skipped.append(case)
            continue
        if not cfg.force and view.is_done(case):
            changed.append(case)
        todo.append(item)
    return todo, skipped, changed, failed


def extraction_settings(cfg: ExtractConfig, extractor: Any, spec: Any) -> str:
    """What an embedding depends on besides its image and mask: the extractor, its weights, seed and
    preprocessing."""
    weights = file_stamp(cfg.weights) if cfg.weights else None
    seed = cfg.seed if getattr(extractor, "uses_seed", True) else None
    return digest([extractor.name, str(extractor.version), cfg.task, seed, weights, repr(spec)])


# -- loading (runs in DataLoader workers) --------------------------------------------------------------------
@dataclass
class CaseWork:
    """One case of a pass: its image, read once, and the item each job (task x view) that needs it makes."""

    case: str
    image: Path
    parts: list[tuple[int, CaseItem]]  # (job index, item)
    hashes: dict[Path, str] = field(default_factory=dict)  # input sha256s planning already took (the pass's)


@dataclass
class Sample:
    """A preprocessed case of one job (or its error) as it comes out of a loader worker."""

    item: CaseItem
    job: int = 0
    image: Any = None  # torch tensor [X, Y, Z] (shared memory across processes)
    mask: Any = None
    prepared: Any = None  # Prepared without its arrays
    image_sha256: str = ""
    mask_sha256: str = ""
    error: str = ""
    read_seconds: float = 0.0
    preprocess_seconds: float = 0.0


def _failure(exc: Exception, image: Path) -> str:
    """One line for a case that cannot be prepared: ctfm's own message, or what failed where."""
    if isinstance(exc, CtfmError):
        return str(exc)
    return f"{image}: preprocessing failed ({type(exc).__name__}: {exc})"


class CaseDataset:
    """Map-style dataset: index -> the case's :class:`Sample` per job. Each image is read and hashed once for
    all its jobs, each view's mask and (box-only) preprocessing once for its tasks. Never raises for a case:
    errors travel in the samples."""

    def __init__(self, works: list[CaseWork], preprocessor: Any) -> None:
        self.works = works
        self.preprocessor = preprocessor

    def __len__(self) -> int:
        return len(self.works)

    def __getitem__(self, index: int) -> list[Sample]:
        from ctfm.extract.preprocess import load_image

        work = self.works[index]
        samples = [Sample(item=item, job=job, error=item.error) for job, item in work.parts]
        todo = [s for s in samples if not s.error]
        if not todo:
            return samples
        t0 = time.perf_counter()
        try:
            image_sha256 = work.hashes.get(work.image) or sha256_file(work.image)
            loaded = load_image(work.image)
        except Exception as exc:  # the image is every job's failure
            for s in todo:
                s.error = _failure(exc, work.image)
            return samples
        read_share = (time.perf_counter() - t0) / len(todo)
        views: dict[Path | None, Sample] = {}  # tasks of one view share its preprocessed volume
        for s in todo:
            s.image_sha256, s.read_seconds = image_sha256, read_share
            done = views.get(s.item.mask)
            if done is None:
                self._prepare(s, loaded, work.hashes)
                views[s.item.mask] = s
            else:
                s.mask_sha256, s.error, s.prepared = done.mask_sha256, done.error, done.prepared
                s.image, s.mask = done.image, done.mask
        return samples

    def _prepare(self, sample: Sample, loaded: Any, hashes: dict[Path, str]) -> None:
        import torch

        from ctfm.extract.preprocess import add_mask

        try:
            t0 = time.perf_counter()
            if sample.item.mask is not None:
                sample.mask_sha256 = hashes.get(sample.item.mask) or sha256_file(sample.item.mask)
                loaded = add_mask(loaded, sample.item.mask)
            t1 = time.perf_counter()
            prepared = self.preprocessor.transform(loaded)
            sample.read_seconds += t1 - t0
            sample.preprocess_seconds = time.perf_counter() - t1
        except Exception as exc:  # any reader/transform failure is this case's failure, not the run's
            sample.error = _failure(exc, sample.item.image)
            return
        sample.image = torch.from_numpy(prepared.image)
        sample.mask = None if prepared.mask is None else torch.from_numpy(prepared.mask)
        prepared.image, prepared.mask = None, None
        sample.prepared = prepared


def _collate(batch: list[list[Sample]]) -> list[Sample]:
    return [s for samples in batch for s in samples]


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)  # workers preprocess one volume each; the model owns the other threads


def make_loader(works: list[CaseWork], preprocessor: Any, workers: int, batch_size: int) -> Any:
    from torch.utils.data import DataLoader

    dataset = CaseDataset(works, preprocessor)
    extra: dict[str, Any] = {"prefetch_factor": 2, "worker_init_fn": _worker_init} if workers > 0 else {}
    return DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=max(1, batch_size),
        shuffle=False,
        num_workers=max(0, workers),
        collate_fn=_collate,
        **extra,
    )


# -- the run ---------------------------------------------------------------------------------------------------
def _record(sample: Sample, extractor: Any, seconds: float) -> CaseRecord:
    p = sample.prepared
    return CaseRecord(
        case=sample.item.case,
        status="ok",
        seconds=seconds,
        image_sha256=sample.image_sha256,
        mask_sha256=sample.mask_sha256,
        spacing=p.source_spacing,
        origin=p.source_origin,
        direction=p.source_direction,
        crop_box_voxel=p.crop_box_voxel,
        crop_box_world=p.crop_box_world,
        extractor=extractor.name,
        extractor_version=str(extractor.version),
        inputs=sample.item.inputs,
        settings=sample.item.settings,
    )


@dataclass
class _Job:
    """One task x view of a pass: where it writes and what it did."""

    cfg: ExtractConfig
    view: View
    summary: ExtractSummary


class _Runner:
    """Feeds loader batches to the extractor and writes each job's results; one instance per pass."""

    def __init__(self, jobs: list[_Job], extractor: Any) -> None:
        self.jobs, self.extractor = jobs, extractor

    def fail(self, job: _Job, case: str, error: str) -> None:
        job.view.record_failure(case, "failed", error, extractor=self.extractor.name)
        job.summary.failed.append((case, error))

    def handle(self, batch: list[Sample]) -> None:
        # stack volumes of one job with equal shape and spacing into one model call (fixed-size crops always are)
        groups: dict[tuple, list[Sample]] = {}
        for s in batch:
            job = self.jobs[s.job]
            job.summary.read_seconds += s.read_seconds
            job.summary.preprocess_seconds += s.preprocess_seconds
            if s.error:
                self.fail(job, s.item.case, s.error)
            else:
                key = (s.job, tuple(s.image.shape), s.prepared.spacing, s.mask is None)
                groups.setdefault(key, []).append(s)
        for (job, *_), group in groups.items():
            self.run_group(self.jobs[job], group)

    def run_group(self, job: _Job, group: list[Sample]) -> None:
        try:
            outputs, seconds = self.model(job, group)
        except Exception as exc:  # a model error is the case's failure; isolate it in a batch
            if len(group) > 1:
                for s in group:
                    self.run_group(job, [s])
            else:
                error = f"extractor {self.extractor.name} failed: {type(exc).__name__}: {exc}"
                self.fail(job, group[0].item.case, error)
            return
        for s, y_hat in zip(group, outputs, strict=True):
            per_case = s.read_seconds + s.preprocess_seconds + seconds / len(group)
            try:
                job.view.write_case(s.item.case, y_hat, _record(s, self.extractor, per_case))
                job.summary.ok.append(s.item.case)
            except StoreError as exc:
                self.fail(job, s.item.case, str(exc))

    def model(self, job: _Job, group: list[Sample]) -> tuple[list[np.ndarray], float]:
        images = np.stack([s.image.numpy() for s in group])
        masks = None if group[0].mask is None else np.stack([s.mask.numpy() for s in group])
        t0 = time.perf_counter()
        outputs = self.extractor.extract(images, masks, group[0].prepared.spacing, job.cfg.task)
        seconds = time.perf_counter() - t0
        job.summary.model_seconds += seconds
        if len(outputs) != len(group):
            raise ValueError(f"returned {len(outputs)} outputs for {len(group)} volumes")
        return [np.asarray(o) for o in outputs], seconds


def prepare_run(cfg: ExtractConfig) -> tuple[View, Path | None, Any]:
    """Validate the options and build (view, mask folder, extractor) before any work starts."""
    from ctfm.extract.extractors import get_extractor

    if cfg.task not in ("lp", "eao"):
        raise ConfigError(f"--task must be lp or eao, not {cfg.task!r}")
    if cfg.workers < 0 or cfg.batch_size < 1:
        raise ConfigError("--workers must be >= 0 and --batch-size >= 1")
    if cfg.weights is not None and not Path(cfg.weights).is_file():
        raise ConfigError(f"--weights {cfg.weights}: file not found")
    view_name, mask_dir = resolve_view(cfg.masks, cfg.disease)
    extractor = get_extractor(cfg.extractor)
    view = open_view(Store(cfg.store).view(cfg.model or extractor.name, cfg.task, view_name), cfg.shard)
    return view, mask_dir, extractor


# What every job of one pass must share: they run one extractor over one set of images.
_SHARED = ("extractor", "images", "store", "model", "workers", "batch_size", "device", "weights", "force",
           "cases", "seed", "shard")  # fmt: skip


def run_local(cfg: ExtractConfig, progress: Progress = NO_PROGRESS) -> ExtractSummary:
    """Extract every selected case into the store in this process; returns what happened. The view is held
    for the run: a second process extracting into it is refused."""
    return run_local_many([cfg], progress)[0]


def run_local_many(cfgs: list[ExtractConfig], progress: Progress = NO_PROGRESS) -> list[ExtractSummary]:
    """Several tasks and views of one extractor in one pass over the images: each image is read and hashed
    once for all of them (a real scan takes about a second to decompress; a benchmark run has a dozen views
    and two tasks). Returns each config's summary, in order; every view is held for the pass."""
    if not cfgs:
        return []
    for cfg in cfgs[1:]:
        differ = [k for k in _SHARED if getattr(cfg, k) != getattr(cfgs[0], k)]
        if differ:
            raise ConfigError(f"extraction jobs of one pass must share {', '.join(differ)}")
    prepared = [prepare_run(cfg) for cfg in cfgs]
    names = [(v.model, v.task, v.view) for v, _, _ in prepared]
    if len(set(names)) != len(names):
        raise ConfigError("extraction jobs of one pass must write different views")
    device = resolve_device(cfgs[0].device).type  # a wrong --device is an error even when every case is done
    extractor = prepared[0][2]
    with contextlib.ExitStack() as held:
        for view, _, _ in prepared:
            held.enter_context(exclusive_use(view.lock_dir))
            held.enter_context(shard_session(view))
            view.remove_abandoned()
        return _extract_pass(cfgs, prepared, extractor, device, progress)


def _extract_pass(
    cfgs: list[ExtractConfig], prepared: list[tuple[View, Path | None, Any]], extractor: Any, device: str,
    progress: Progress,
) -> list[ExtractSummary]:  # fmt: skip
    from ctfm.extract.preprocess import Preprocessor, resolve_spec

    spec = resolve_spec(extractor.preprocess)
    # An input whose stamp changed is hashed once: not once per view, nor again when the pass reads it.
    hashes: dict[Path, str] = {}

    def hash_file(path: Path) -> str:
        if path not in hashes:
            hashes[path] = sha256_file(path)
        return hashes[path]

    selection = select_cases(cfgs[0].images, cfgs[0].cases)  # jobs share images and cases (_SHARED)
    jobs, works = [], {}
    for index, (cfg, (view, mask_dir, _)) in enumerate(zip(cfgs, prepared, strict=True)):
        settings = extraction_settings(cfg, extractor, spec)
        items, skipped, changed, failed = plan_items(selection, cfg, view, mask_dir, settings, hash_file)
        label = f"{view.model}/{view.task}/{view.view}"
        summary = ExtractSummary(view=label, failed=failed, skipped=skipped, changed=changed)
        jobs.append(_Job(cfg, view, summary))
        for item in items:
            works.setdefault(item.case, CaseWork(item.case, item.image, [], hashes)).parts.append(
                (index, item)
            )
    summaries = [job.summary for job in jobs]
    if not works:
        return summaries
    extractor.setup(device=device, weights=cfgs[0].weights, seed=cfgs[0].seed)
    runner = _Runner(jobs, extractor)
    todo = [works[case] for case in sorted(works)]
    loader = make_loader(todo, Preprocessor(spec, with_mask=False), cfgs[0].workers, cfgs[0].batch_size)
    label = summaries[0].view if len(jobs) == 1 else f"{jobs[0].view.model} ({len(jobs)} views)"
    start = time.perf_counter()
    with tracked(progress, f"extract {label}", sum(len(w.parts) for w in todo)) as advance:
        for batch in loader:
            runner.handle(batch)
            advance(len(batch))
    wall = time.perf_counter() - start
    for summary in summaries:
        summary.wall_seconds = wall  # the pass's, shared by its jobs
    return summaries
