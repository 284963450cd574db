"""A team's run and whole runs: every case of a team, chunked over containers, ingested into the store.

:func:`run_team` runs one team's image over a folder of scans into its store view, resumable per image id: a
case already ``ok`` for the same image and inputs is skipped. Its outputs are stored as soon as they are
valid, one feature size per team; a case missing after a batch is retried once alone. Every case ends
``ok``, ``failed`` or ``timeout`` with its reason and seconds, and a store that cannot be written stops that
team with one line. :func:`run_containers` runs every team of ``ctfm extract --containers``, one after the
other (chunks over GPUs); one team's broken tarball or refused container never stops the teams after it.

Timing (the reference's ``RunningTime``): one container per case (``--per-case``) records that container's
wall time for its case; a batch records its wall time shared equally over its cases, so every processed case
gets a comparable, non-zero figure; a case retried alone gets that container's time.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ctfm.core.errors import ConfigError, ContainerError, StoreError
from ctfm.core.fsutil import exclusive_use
from ctfm.core.progress import NO_PROGRESS, Progress, tracked
from ctfm.extract.containers import tarballs
from ctfm.extract.containers.engine import EngineSetupError, RunSettings, split_cpus
from ctfm.extract.containers.folders import CaseInput
from ctfm.extract.containers.outputs import feature_dim
from ctfm.extract.containers.runner import DISK_FULL, ContainerResult, ContainerRunner, one_line
from ctfm.extract.containers.tarballs import TeamImage
from ctfm.store import FULL_VIEW


@dataclass
class CaseOutcome:
    case: str
    status: str  # ok | failed | timeout
    seconds: float = 0.0
    error: str = ""


@dataclass
class TeamReport:
    """Per-team summary: the end-of-run table row."""

    team: str
    task: str
    view: str
    image_id: str = ""
    image_size: int = 0
    outcomes: dict[str, CaseOutcome] = field(default_factory=dict)
    skipped: int = 0
    stray: list[str] = field(default_factory=list)
    peak_memory: int | None = None
    log_path: Path | None = None
    timing_csv: Path | None = None
    error: str = ""  # the team could not be run (image not loaded, store unwritable)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes.values())

    @property
    def median_s(self) -> float | None:
        secs = [o.seconds for o in self.outcomes.values() if o.status == "ok"]
        return statistics.median(secs) if secs else None

    @property
    def all_ok(self) -> bool:
        return not self.error and all(o.status == "ok" for o in self.outcomes.values())


def collect_inputs(
    images_dir: Path, masks_dir: Path | None, cases: Sequence[str] | None = None
) -> tuple[list[CaseInput], dict[str, str], dict[str, str]]:
    """The cases of ``images_dir`` (optionally a subset) with their masks, the cases whose mask is missing, and
    the files that cannot be cases (see :func:`~ctfm.extract.inputs.select_cases`), each with why."""
    from ctfm.extract.inputs import mask_of, select_cases

    selected, refused = select_cases(images_dir, cases)
    out, no_mask = [], {}
    for case, path in selected:
        mask = None
        if masks_dir is not None:
            mask, error = mask_of(masks_dir, path)
            if error:
                no_mask[case] = error
                continue
        out.append(CaseInput(case, path, mask))
    return out, no_mask, refused


def run_team(
    runner: ContainerRunner,
    image: TeamImage,
    images_dir: Path,
    masks_dir: Path | None = None,
    view: str = "full",
    cases: Sequence[str] | None = None,
    progress: Progress = NO_PROGRESS,
) -> TeamReport:
    """Run one team's image over ``images_dir`` into the store view; resumable per image id. A store
    that cannot be written (a full disk) ends this team with one line; the caller goes on."""
    from ctfm.extract.inputs import is_current
    from ctfm.store import Store
    from ctfm.store.shards import done_in_shard, open_view, shard_session

    s = runner.settings
    report = TeamReport(
        team=image.team, task=s.task, view=view, image_id=image.image_id, image_size=image.size
    )
    try:
        store_view = open_view(Store(runner.store_root).view(image.team, s.task, view), s.shard)
        report.team = store_view.model
        # a second runner on this team's view is refused; a cluster task holds only its shard
        with exclusive_use(store_view.lock_dir), shard_session(store_view):
            all_inputs, no_mask, refused = collect_inputs(images_dir, masks_dir, cases)
            todo = []
            for ci in all_inputs:
                if (
                    done_in_shard(store_view, ci.case)
                    if s.force
                    else is_current(store_view, ci.case, ci.image, ci.mask, image.image_id)
                ):
                    report.skipped += 1
                    continue
                todo.append(ci)
            progress.advance(report.skipped)
            store_view.remove_abandoned()
            report.log_path = store_view.dir / "container.log"
            team = _TeamState(runner, image, store_view, report, progress)
            for case, why in no_mask.items():
                if store_view.is_done(case):  # a missing input is not a changed one: keep what was made
                    why += "; kept the embedding already stored"
                else:
                    store_view.record_failure(case, "failed", why, image_id=image.image_id)
                team.set(CaseOutcome(case, "failed", 0.0, why))
            for case, why in refused.items():  # no store record can be named after them
                team.set(CaseOutcome(case, "failed", 0.0, why))
            slots = list(s.gpus) or [None]
            cpusets = [s.cpuset] * len(slots) if s.cpuset else split_cpus(len(slots))
            chunks = [[ci] for ci in todo] if s.per_case else _chunks(todo, s.batch_cases)
            with report.log_path.open("ab") as log_fh:
                team.log_fh = log_fh
                _run_parallel(chunks, slots, cpusets, team.run_chunk)
            if report.outcomes:
                report.timing_csv = store_view.write_timing_csv(image.name)
    except OSError as exc:  # the store's disk is full or unwritable: this team stops here
        report.error = f"store write failed ({exc.strerror or exc}); {report.count('ok')} case(s) stored"
        runner.log(f"{image.team}: {report.error}")
    return report


class _TeamState:
    """Ingestion for one team: D consistency, store writes (serialised), outcomes, retries, timing."""

    def __init__(
        self,
        runner: ContainerRunner,
        image: TeamImage,
        view: Any,
        report: TeamReport,
        progress: Progress,
    ) -> None:
        self.runner = runner
        self.image = image
        self.view = view
        self.report = report
        self.progress = progress
        # D is fixed by this image's earlier ok cases (a resumed run), else by its first valid output.
        same = [r for r in view.records().values() if r.status == "ok" and r.image_id == image.image_id]
        self.dim: int | None = int(same[0].shape[0]) if same and same[0].shape else None
        self.by_case: dict[str, CaseInput] = {}
        self.log_fh: Any = None

    def _record_fields(self, ci: CaseInput) -> dict[str, Any]:
        return {
            "image_sha256": self.runner.input_sha256(ci.image),
            "mask_sha256": self.runner.input_sha256(ci.mask) if ci.mask else "",
            "extractor": f"container:{self.image.team}",
            "extractor_version": (self.image.tags or [self.image.image_id])[0],
            "image_id": self.image.image_id,
            "inputs": ci.inputs(self.image.image_id),
            "settings": self.image.image_id,
        }

    def ingest(self, case: str, y_hat: np.ndarray, seconds: float) -> bool:
        """Store a valid output in the store's own layout; a feature size or store refusal fails the case."""
        from ctfm.store import CaseRecord

        fields = self._record_fields(self.by_case[case])  # hashing stays outside the lock
        with self.runner.ingest_lock:
            if self.dim is not None and feature_dim(y_hat) != self.dim:
                why = f"feature size {feature_dim(y_hat)} differs from {self.dim} of this team's other cases"
                self.fail(case, "failed", why, seconds)
                return False
            record = CaseRecord(case=case, status="ok", seconds=round(seconds, 4), **fields)
            try:
                self.view.write_case(case, y_hat, record)
            except StoreError as exc:
                self.fail(case, "failed", str(exc), seconds)
                return False
            except OSError as exc:
                if exc.errno in DISK_FULL:  # nothing more can be stored: the team stops with one line
                    raise
                self.fail(case, "failed", f"could not store it ({exc.strerror or exc})", seconds)
                return False
            if self.dim is None:
                self.dim = feature_dim(y_hat)
            self.set(CaseOutcome(case, "ok", seconds))
        return True

    def fail(self, case: str, status: str, error: str, seconds: float) -> None:
        """Record a failed case with the seconds it used."""
        fields = self._record_fields(self.by_case[case])
        self.view.record_failure(case, status, error, seconds=round(seconds, 4), **fields)
        self.set(CaseOutcome(case, status, seconds, error))

    def set(self, outcome: CaseOutcome) -> None:
        new = outcome.case not in self.report.outcomes
        self.report.outcomes[outcome.case] = outcome
        if new:
            self.progress.advance(1)

    def run_chunk(self, chunk: list[CaseInput], gpu: str | None, cpuset: str) -> None:
        """Run one chunk; anything unforeseen fails its unsettled cases with the reason, not the run."""
        for ci in chunk:
            self.by_case[ci.case] = ci
        try:
            self._run_chunk(chunk, gpu, cpuset)
        except (EngineSetupError, OSError):  # the whole run, or the store (the team)
            raise
        except Exception as exc:
            with self.runner.ingest_lock:
                for ci in chunk:
                    if ci.case not in self.report.outcomes:
                        self.fail(ci.case, "failed", f"runner error: {one_line(exc)}", 0.0)

    def _run_chunk(self, chunk: list[CaseInput], gpu: str | None, cpuset: str) -> None:
        result = self.runner.run_container(self.image, chunk, self.ingest, self.log_fh, gpu, cpuset)
        self._note(result)
        if len(chunk) == 1:
            self._settle(chunk, result)
            return
        with self.runner.ingest_lock:
            for case in result.taken:  # taken while the batch ran: now its share of the batch's wall time
                outcome = self.report.outcomes.get(case)
                if outcome is not None and outcome.status == "ok":
                    outcome.seconds = self.view.retime(case, result.share_s).seconds
            for case, reason in result.invalid.items():
                self.fail(case, "failed", reason, result.share_s)
        for ci in chunk:  # one retry alone: a crash or hang on one case must not cost the others
            if ci.case not in self.report.outcomes:
                self.runner.log(f"{self.image.team}: {ci.case} missing after its batch; retrying it alone")
                retry = self.runner.run_container(self.image, [ci], self.ingest, self.log_fh, gpu, cpuset)
                self._note(retry)
                self._settle([ci], retry)

    def _settle(self, chunk: list[CaseInput], result: ContainerResult) -> None:
        """Fail the cases a one-case container left without a valid output, with its wall time."""
        seconds = result.wall_s
        with self.runner.ingest_lock:
            for ci in chunk:
                if ci.case in self.report.outcomes:
                    continue
                if ci.case in result.invalid:
                    self.fail(ci.case, "failed", result.invalid[ci.case], seconds)
                elif result.timed_out:
                    limit = self.runner.settings.timeout_per_case
                    self.fail(ci.case, "timeout", f"no output within {limit:g} s; container killed", seconds)
                else:
                    why = result.exit_reason(self.runner.settings.memory)
                    self.fail(ci.case, "failed", f"no output ({why}); see {self.report.log_path}", seconds)

    def _note(self, result: ContainerResult) -> None:
        if result.stray:
            names = ", ".join(result.stray[:10])
            self.runner.log(
                f"{self.image.team}: {result.name} left stray files (reported, not stored): {names}"
            )
            self.report.stray.extend(result.stray)
        if result.peak_memory is not None:
            self.report.peak_memory = max(self.report.peak_memory or 0, result.peak_memory)


def _chunks(items: list[CaseInput], n: int) -> list[list[CaseInput]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def _run_parallel(chunks: list, slots: list, cpusets: list[str], fn: Callable) -> None:
    """Chunks over slots (one per GPU, or one without GPUs); an engine-level error stops everything."""
    if len(slots) == 1:
        for chunk in chunks:
            fn(chunk, slots[0], cpusets[0])
        return
    import queue

    jobs: queue.Queue = queue.Queue()
    for chunk in chunks:
        jobs.put(chunk)
    errors: list[BaseException] = []

    def worker(gpu: str, cpus: str) -> None:
        while not errors:
            try:
                chunk = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                fn(chunk, gpu, cpus)
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [
        threading.Thread(target=worker, args=(g, c), daemon=True)
        for g, c in zip(slots, cpusets, strict=False)
    ]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    if errors:
        raise errors[0]


@dataclass(frozen=True)
class ContainerRunOptions:
    """One run of team images (``ctfm extract --containers DIR | --image TAG``), checked when built: which
    images, over which scans, into which store view."""

    store: Path
    images: Path  # the folder of <case>.nii.gz scans
    settings: RunSettings = field(default_factory=RunSettings)
    tarballs: Path | None = None  # a folder of <team>_lp.tar.gz / <team>_eao.tar.gz
    tags: tuple[str, ...] = ()  # local images, by tag
    masks: Path | None = None  # the view's mask folder (fg_masks/<disease>); None for view full
    view: str = FULL_VIEW
    cases: tuple[str, ...] | None = None  # None: every case of ``images``

    def __post_init__(self) -> None:
        for name, kind in (("store", Path), ("images", Path), ("tarballs", Path), ("masks", Path),
                           ("tags", tuple), ("cases", tuple)):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, kind(value))
        if self.tarballs is None and not self.tags:
            raise ConfigError(
                "pass --containers DIR (of <team>_lp.tar.gz / <team>_eao.tar.gz) or --image TAG"
            )
        if (self.masks is None) != (self.view == FULL_VIEW):
            raise ConfigError(
                f"view {self.view!r} with masks {self.masks}: an ROI view needs its mask folder, view "
                f"{FULL_VIEW!r} none"
            )

    def resolved(self) -> ContainerRunOptions:
        """The same run with absolute paths (for tasks that run in another folder or on another node)."""
        return replace(self, store=self.store.resolve(), images=self.images.resolve(),
                       tarballs=self.tarballs and self.tarballs.resolve(),
                       masks=self.masks and self.masks.resolve())  # fmt: skip


def run_containers(
    options: ContainerRunOptions, log: Callable[[str], None] | None = None, progress: Progress = NO_PROGRESS
) -> list[TeamReport]:
    """Every team of ``options``, one after the other (chunks over GPUs); one report per team. One team's
    broken tarball, refused container or unwritable store never stops the teams after it; ``log`` gets a line
    for each such problem."""
    settings = options.settings
    sources: list[tuple[str, Path | str]] = []
    if options.tarballs is not None:
        sources += list(tarballs.discover_tarballs(options.tarballs, settings.task).items())
    sources += [(tarballs.team_from_tag(tag), tag) for tag in options.tags]
    teams = [team for team, _ in sources]
    dupes = sorted({t for t in teams if teams.count(t) > 1})
    if dupes:
        raise ConfigError(
            f"two images map to team {dupes[0]!r} (one store model per team); give distinct names"
        )
    n_cases = len(options.cases) if options.cases is not None else len(_case_names(options.images))
    say = log or (lambda m: None)
    reports = []
    with ContainerRunner(options.store, settings, log=log) as runner:
        for team, source in sources:
            with tracked(progress, team, n_cases):
                reports.append(_run_source(runner, team, source, options, say, progress))
    return reports


def _run_source(
    runner: ContainerRunner,
    team: str,
    source: Path | str,
    options: ContainerRunOptions,
    say: Callable[[str], None],
    progress: Progress,
) -> TeamReport:
    """One team's image (a tarball or a tag) over the run's cases; a broken tarball or a container the
    engine refuses gives a report with the error instead of stopping the run."""
    task = options.settings.task
    try:
        if isinstance(source, Path):
            image = runner.load_tarball(source, team)
            for problem in tarballs.naming_problems(source, image.tags, task):
                say(f"{source.name}: the reference runner would not run it: {problem}")
        else:
            image = runner.resolve_tag(source, team)
    except ContainerError as exc:  # one team's broken tarball must not stop the others
        say(f"{team}: {exc}")
        return TeamReport(team=team, task=task, view=options.view, error=str(exc))
    try:
        return run_team(runner, image, options.images, options.masks, options.view, options.cases, progress)
    except EngineSetupError:
        raise
    except ContainerError as exc:  # the engine refused this team's container
        say(f"{team}: {exc}")
        return TeamReport(team=team, task=task, view=options.view, error=str(exc))
    finally:
        runner.release(image)


def _case_names(images_dir: Path) -> list[str]:
    from ctfm.core.nifti import case_id, list_volumes

    return [case_id(p) for p in list_volumes(Path(images_dir))]


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"
