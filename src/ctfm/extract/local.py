"""In-process extraction: a prefetching DataLoader feeds preprocessed volumes to an extractor, the store keeps them.

Loader workers read, decompress and preprocess (MONAI) while the main process runs the model, so reading overlaps
with compute. Per-case problems (corrupt image, missing or empty mask) are recorded as failed cases and the run
goes on; cases already ok in the view are skipped unless ``force``.

Example:
    >>> cfg = ExtractConfig(extractor="hu-stats", images=Path("bench/images"), store=Path("store"))  # doctest: +SKIP
    >>> summary = run_local(cfg)  # doctest: +SKIP
    >>> summary.failed  # doctest: +SKIP
    []
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctfm.benchmark import load_benchmark
from ctfm.errors import ConfigError, CtfmError, DataError, StoreError
from ctfm.extract.inputs import case_inputs, is_current, mask_of, select_cases
from ctfm.fsutil import digest, exclusive_use, file_stamp, sha256_file
from ctfm.store import FULL_VIEW, CaseRecord, Store, View

DEVICES = ("auto", "cpu", "cuda")


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
    write_seconds: float = 0.0

    @property
    def volumes_per_second(self) -> float:
        done = len(self.ok) + len(self.failed)
        return done / self.wall_seconds if self.wall_seconds > 0 else 0.0


# -- inputs -------------------------------------------------------------------------------------------------
def resolve_mask_dir(masks: Path, disease: str) -> Path:
    """``--masks`` is ``fg_masks/<disease>`` or the ``fg_masks`` root (then ``<disease>/`` inside is used)."""
    masks = Path(masks)
    if (masks / disease).is_dir():
        return masks / disease
    if masks.is_dir():
        if masks.name == disease or not any(p.is_dir() for p in masks.iterdir()):
            return masks
        raise DataError(f"{masks}: has no {disease}/ folder; pass fg_masks/{disease} or the fg_masks root")
    raise DataError(f"{masks}: mask folder not found")


def resolve_view(masks: Path | None, disease: str | None) -> tuple[str, Path | None]:
    """(view name, mask folder). No masks: view ``full``; masks need an ROI disease."""
    bench = load_benchmark()
    if masks is None:
        if disease is not None and bench.is_roi(disease):
            raise ConfigError(f"{disease} is an ROI disease: pass --masks fg_masks (or fg_masks/{disease})")
        return FULL_VIEW, None
    if disease is None:
        disease = Path(masks).name
        if disease not in bench.roi_diseases:
            raise ConfigError(
                "--masks needs --disease NAME (an ROI disease) unless the folder is named after it"
            )
    if not bench.is_roi(disease):
        raise ConfigError(f"{disease} is a whole-scan disease: extract it without --masks (view full)")
    return disease, resolve_mask_dir(masks, disease)


def plan_items(
    cfg: ExtractConfig, view: View, mask_dir: Path | None, settings: str
) -> tuple[list[CaseItem], list[str], list[str]]:
    """Cases to run (with their mask), cases skipped because they are already ok, and the ok cases run
    again because their image, mask or the extraction ``settings`` changed since they were stored."""
    todo, skipped, changed = [], [], []
    for case, image in select_cases(cfg.images, cfg.cases):
        item = CaseItem(case=case, image=image, settings=settings)
        if mask_dir is not None:
            item.mask, item.error = mask_of(mask_dir, image)
        mask = None if item.error else item.mask
        item.inputs = case_inputs(image, mask, settings)
        if not cfg.force and not item.error and is_current(view, case, image, mask, settings):
            skipped.append(case)
            continue
        if not cfg.force and view.is_done(case):
            changed.append(case)
        todo.append(item)
    return todo, skipped, changed


def extraction_settings(cfg: ExtractConfig, extractor: Any, spec: Any) -> str:
    """What an embedding depends on besides its image and mask: the extractor, its weights, seed and
    preprocessing."""
    weights = file_stamp(cfg.weights) if cfg.weights else None
    seed = cfg.seed if getattr(extractor, "uses_seed", True) else None
    return digest([extractor.name, str(extractor.version), cfg.task, seed, weights, repr(spec)])


def resolve_device(device: str) -> str:
    import torch

    if device not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but torch sees no CUDA GPU; use --device cpu or auto")
    return device


# -- loading (runs in DataLoader workers) --------------------------------------------------------------------
@dataclass
class Sample:
    """A preprocessed case (or its error) as it comes out of a loader worker."""

    item: CaseItem
    image: Any = None  # torch tensor [X, Y, Z] (shared memory across processes)
    mask: Any = None
    prepared: Any = None  # Prepared without its arrays
    image_sha256: str = ""
    mask_sha256: str = ""
    error: str = ""
    read_seconds: float = 0.0
    preprocess_seconds: float = 0.0


class CaseDataset:
    """Map-style dataset: index -> :class:`Sample`. Never raises for a case: errors travel in the sample."""

    def __init__(self, items: list[CaseItem], preprocessor: Any) -> None:
        self.items = items
        self.preprocessor = preprocessor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        import torch

        item = self.items[index]
        sample = Sample(item=item)
        if item.error:
            sample.error = item.error
            return sample
        try:
            t0 = time.perf_counter()
            sample.image_sha256 = sha256_file(item.image)
            sample.mask_sha256 = sha256_file(item.mask) if item.mask is not None else ""
            data = self.preprocessor.load(item.image, item.mask)
            t1 = time.perf_counter()
            prepared = self.preprocessor.transform(data)
            sample.read_seconds, sample.preprocess_seconds = t1 - t0, time.perf_counter() - t1
        except CtfmError as exc:
            sample.error = str(exc)
            return sample
        except Exception as exc:  # any reader/transform failure is this case's failure, not the run's
            sample.error = f"{item.image}: preprocessing failed ({type(exc).__name__}: {exc})"
            return sample
        sample.image = torch.from_numpy(prepared.image)
        sample.mask = None if prepared.mask is None else torch.from_numpy(prepared.mask)
        prepared.image, prepared.mask = None, None
        sample.prepared = prepared
        return sample


def _collate(batch: list[Sample]) -> list[Sample]:
    return batch


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)  # workers preprocess one volume each; the model owns the other threads


def make_loader(items: list[CaseItem], preprocessor: Any, workers: int, batch_size: int) -> Any:
    from torch.utils.data import DataLoader

    dataset = CaseDataset(items, preprocessor)
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


class _Runner:
    """Feeds loader batches to the extractor and writes results; one instance per run."""

    def __init__(self, view: View, extractor: Any, task: str, summary: ExtractSummary) -> None:
        self.view, self.extractor, self.task, self.summary = view, extractor, task, summary

    def fail(self, case: str, error: str) -> None:
        self.view.record_failure(case, "failed", error, extractor=self.extractor.name)
        self.summary.failed.append((case, error))

    def handle(self, batch: list[Sample]) -> None:
        good = []
        for s in batch:
            self.summary.read_seconds += s.read_seconds
            self.summary.preprocess_seconds += s.preprocess_seconds
            if s.error:
                self.fail(s.item.case, s.error)
            else:
                good.append(s)
        # stack volumes of equal shape and spacing into one model call (fixed-size crops always are)
        groups: dict[tuple, list[Sample]] = {}
        for s in good:
            groups.setdefault((tuple(s.image.shape), s.prepared.spacing, s.mask is None), []).append(s)
        for group in groups.values():
            self.run_group(group)

    def run_group(self, group: list[Sample]) -> None:
        try:
            outputs, seconds = self.model(group)
        except Exception as exc:  # a model error is the case's failure; isolate it in a batch
            if len(group) > 1:
                for s in group:
                    self.run_group([s])
            else:
                error = f"extractor {self.extractor.name} failed: {type(exc).__name__}: {exc}"
                self.fail(group[0].item.case, error)
            return
        t0 = time.perf_counter()
        for s, y_hat in zip(group, outputs, strict=True):
            per_case = s.read_seconds + s.preprocess_seconds + seconds / len(group)
            try:
                self.view.write_case(s.item.case, y_hat, _record(s, self.extractor, per_case))
                self.summary.ok.append(s.item.case)
            except StoreError as exc:
                self.fail(s.item.case, str(exc))
        self.summary.write_seconds += time.perf_counter() - t0

    def model(self, group: list[Sample]) -> tuple[list[np.ndarray], float]:
        images = np.stack([s.image.numpy() for s in group])
        masks = None if group[0].mask is None else np.stack([s.mask.numpy() for s in group])
        t0 = time.perf_counter()
        outputs = self.extractor.extract(images, masks, group[0].prepared.spacing, self.task)
        seconds = time.perf_counter() - t0
        self.summary.model_seconds += seconds
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
    view = Store(cfg.store).view(cfg.model or extractor.name, cfg.task, view_name)
    return view, mask_dir, extractor


def run_local(cfg: ExtractConfig, progress: bool = True) -> ExtractSummary:
    """Extract every selected case into the store in this process; returns what happened. The view is held
    for the run: a second process extracting into it is refused."""
    view, mask_dir, extractor = prepare_run(cfg)
    device = resolve_device(cfg.device)  # a wrong --device is an error even when every case is done
    with exclusive_use(view.dir):
        view.remove_abandoned()
        return _extract_view(cfg, view, mask_dir, extractor, device, progress)


def _extract_view(
    cfg: ExtractConfig, view: View, mask_dir: Path | None, extractor: Any, device: str, progress: bool
) -> ExtractSummary:
    from ctfm.extract.preprocess import Preprocessor, resolve_spec

    spec = resolve_spec(extractor.preprocess)
    items, skipped, changed = plan_items(cfg, view, mask_dir, extraction_settings(cfg, extractor, spec))
    summary = ExtractSummary(view=f"{view.model}/{view.task}/{view.view}", skipped=skipped, changed=changed)
    if not items:
        return summary
    extractor.setup(device=device, weights=cfg.weights, seed=cfg.seed)
    preprocessor = Preprocessor(spec, with_mask=mask_dir is not None)
    runner = _Runner(view, extractor, cfg.task, summary)
    loader = make_loader(items, preprocessor, cfg.workers, cfg.batch_size)
    start = time.perf_counter()
    with _progress(progress, len(items), summary.view) as advance:
        for batch in loader:
            runner.handle(batch)
            advance(len(batch))
    summary.wall_seconds = time.perf_counter() - start
    return summary


class _progress:
    """A rich progress bar, or nothing (tests, benchmarks)."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self.enabled, self.total, self.label = enabled, total, label
        self._bar: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return lambda n: None
        from ctfm.progress import progress_bar

        self._bar = progress_bar("[bold]extract[/] {task.description}")
        self._bar.__enter__()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
