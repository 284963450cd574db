"""Run team containers over the scans: the reference's contract, confined, timed, validated, resumable.

Each container gets the chunk's images in ``/workspace/inputs`` (read-only; masks in ``fg_masks/`` and
``MASKS_DIR`` for an ROI disease) and an empty, size-capped ``/workspace/outputs``, and runs the reference
command under the settings of :mod:`~ctfm.extract.containers.engine`. Every output is checked
(:mod:`~ctfm.extract.containers.outputs`) and stored, in the store's own layout, as soon as it is complete, so
killing the runner loses no finished case and a rerun skips what is already ``ok`` for the same image id.
Nothing a container writes can raise out of the runner: whatever goes wrong becomes that case's (or, for the
store, that team's) recorded failure, and the next team runs.

Timing (the reference's ``RunningTime``): a container's wall time runs from its creation until it has exited
and been removed, start-up included, as the reference times ``docker container run --rm``. One container per
case (``per_case``) records that time for its case; a batch records its wall time shared equally over its
cases, so every processed case gets a comparable, non-zero figure. A case missing after a batch is retried
once alone and gets that container's time.

Example:
    >>> runner = ContainerRunner(store_root=Path("store"), settings=RunSettings(task="lp"))  # doctest: +SKIP
    >>> with runner:  # doctest: +SKIP
    ...     report = runner.run_team(runner.load_tarball(Path("teams/acme_lp.tar.gz"), "acme"), Path("images"))
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctfm.errors import ConfigError, ContainerError, StoreError
from ctfm.extract.containers import cleanup, tarballs
from ctfm.extract.containers.engine import (
    LABEL,
    LABEL_PID,
    Engine,
    EngineSetupError,
    RunSettings,
    api_error,
    container_config,
    docker_client,
    scratch_config,
    split_cpus,
)
from ctfm.extract.containers.folders import CaseInput, RunFolders, remove_tree
from ctfm.extract.containers.outputs import (
    OUTPUT_SUFFIX,
    OutputInvalid,
    OutputReader,
    check_output,
    feature_dim,
    present_outputs,
    stray_entries,
)
from ctfm.extract.containers.tarballs import TeamImage
from ctfm.fsutil import exclusive_use, sha256_file

LOG_TAIL_BYTES = 4096
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
OnOutput = Callable[[str, np.ndarray, float], bool]


@dataclass
class ContainerResult:
    """What one container did over its cases (before ingestion outcomes are known)."""

    name: str
    cases: list[str]
    exit_code: int | None = None
    timed_out: bool = False
    wall_s: float = 0.0
    stray: list[str] = field(default_factory=list)
    peak_memory: int | None = None
    error: str = ""
    invalid: dict[str, str] = field(default_factory=dict)  # case -> why its final output was rejected
    taken: dict[str, tuple[int, int]] = field(default_factory=dict)  # taken while it ran: case -> stamp
    oom_killed: bool = False
    log_tail: str = ""

    def exit_reason(self, memory: str) -> str:
        """Why the container ended without all its outputs, as one phrase."""
        if self.error:
            return self.error
        if self.oom_killed:
            return f"container killed: out of memory (limit {memory})"
        return f"container exited with code {self.exit_code}"

    @property
    def share_s(self) -> float:
        """Each case's part of the container's wall time."""
        return self.wall_s / max(len(self.cases), 1)


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


class ContainerRunner:
    """Runs team images; owns every container, folder and image it adds and removes them on exit, Ctrl-C or
    SIGTERM (and, through its watchdog and the containers' own deadlines, after SIGKILL)."""

    def __init__(
        self,
        store_root: Path,
        settings: RunSettings,
        client: Any | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store_root = Path(store_root).resolve()  # the engine mounts absolute paths only
        self._watched = client is None  # the watchdog reaches the engine the way docker_client() does
        self.client = client or docker_client()
        self.log = log or (lambda msg: None)
        self.reader = OutputReader(settings.read_timeout_s)
        self.work = self.store_root / cleanup.WORK_DIR / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._engine: Engine | None = None
        self._scratch: dict[str, dict[str, Any]] = {}
        self._watchdog: Any = None
        self._live: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.ingest_lock = threading.Lock()
        self._stop = threading.Event()
        self._old_handlers: dict[int, Any] = {}
        self._hashes: dict[tuple[str, int, int], str] = {}

    def input_sha256(self, path: Path) -> str:
        """sha256 of an input volume or mask, hashed once per run: every team and view reads the same inputs.
        Keyed by size and mtime too, so a file replaced during the run is hashed again."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = sha256_file(path)
        return self._hashes[key]

    # -- lifecycle -----------------------------------------------------------------------------------------
    def __enter__(self) -> ContainerRunner:
        for name in cleanup.sweep(self.client, self.store_root):
            self.log(f"removed stale container {name}")
        self.work.mkdir(parents=True, exist_ok=True)
        os.chmod(self.work, 0o755)
        if self._watched:
            self._watchdog = cleanup.start_watchdog(self.store_root)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._stop.is_set():
            return  # already stopping: let the cleanup finish
        self._stop.set()
        raise KeyboardInterrupt(f"signal {signum}")

    def close(self) -> None:
        """Remove every container still alive, the work folder and the output reader; restore signals.

        Besides the containers it knows, it removes any labelled with this process id: one whose create call
        was interrupted by a signal exists in the engine although the runner never got its id.
        """
        self._stop.set()
        with self._lock:
            live = list(self._live.values())
            self._live.clear()
        for c in live:
            with contextlib.suppress(Exception):
                c.remove(force=True)
        with contextlib.suppress(Exception):
            mine = self.client.api.containers(
                all=True, filters={"label": [LABEL, f"{LABEL_PID}={os.getpid()}"]}
            )
            for c in mine:
                with contextlib.suppress(Exception):
                    self.client.api.remove_container(c["Id"], force=True)
        with contextlib.suppress(OSError):
            remove_tree(self.work)
        self.reader.close()
        if self._watchdog is not None:
            self._watchdog.terminate()
            with contextlib.suppress(Exception):
                self._watchdog.wait(5)
            self._watchdog = None
        for sig, handler in self._old_handlers.items():
            with contextlib.suppress(Exception):
                signal.signal(sig, handler)
        self._old_handlers.clear()

    # -- images --------------------------------------------------------------------------------------------
    def load_tarball(self, tarball: Path, team: str | None = None) -> TeamImage:
        """Load a team tarball untagged (see :mod:`~ctfm.extract.containers.tarballs`)."""
        tarball = Path(tarball)
        name = team or tarballs.reference_name(tarball).removesuffix(f"_{self.settings.task}")
        image = tarballs.load_tarball(self.client, tarball, name, self.log)
        if image.loaded:
            cleanup.note_loaded(self.work, image.image_id)
        return image

    def resolve_tag(self, tag: str, team: str | None = None) -> TeamImage:
        return tarballs.resolve_tag(self.client, tag, team)

    def release(self, image: TeamImage) -> None:
        """Remove an image this runner loaded, unless asked to keep it."""
        tarballs.release(self.client, image, self.settings.keep_images, self.log)

    def engine(self, image: TeamImage) -> Engine:
        """What the engine enforces (found with the first image); its fallbacks are said once."""
        with self._lock:
            if self._engine is None:
                size = image.size + (1 << 30)
                self._engine = Engine.detect(self.client, image.image_id, size, self.work)
                for note in self._engine.notes(self.settings):
                    self.log(note)
            return self._engine

    def _scratch_for(self, image: TeamImage) -> dict[str, Any]:
        engine = self.engine(image)
        with self._lock:
            if image.image_id not in self._scratch:
                config, note = scratch_config(self.client, engine, image, self.settings)
                if note:
                    self.log(note)
                self._scratch[image.image_id] = config
            return self._scratch[image.image_id]

    # -- one container -------------------------------------------------------------------------------------
    def run_container(
        self,
        image: TeamImage,
        inputs: Sequence[CaseInput],
        on_output: OnOutput,
        log_fh: Any | None = None,
        gpu: str | None = None,
        cpuset: str | None = None,
    ) -> ContainerResult:
        """Run ``image`` once over ``inputs``; ``on_output(case, y_hat, seconds)`` takes each valid output.

        In a batch a file is taken while the container runs once its size and time are stable between polls
        and it validates (``seconds`` is then the time since the start); after exit every expected file is
        checked again (a changed one is taken again) with ``seconds`` = the case's share of the wall time.
        ``on_output`` returns False when it rejected the output (feature size, store), which settles it too.
        Engine and host errors become ``result.error``; an engine that cannot run anything raises.
        """
        from requests.exceptions import RequestException

        import docker

        s = self.settings
        cases = [ci.case for ci in inputs]
        name = f"ctfm-{_docker_name(image.team)}-{uuid.uuid4().hex[:12]}"
        result = ContainerResult(name=name, cases=cases)
        folders: RunFolders | None = None
        container = None
        try:
            engine = self.engine(image)
            scratch = self._scratch_for(image)
            folders = RunFolders.prepare(
                self.work / name,
                inputs,
                engine.mount_outputs,
                s.max_output_bytes * len(cases),
                s.max_output_files,
            )
            t0 = time.monotonic()
            deadline_at = time.time() + s.deadline_s(len(cases))
            config = container_config(
                image,
                s,
                name=name,
                in_dir=folders.inputs,
                out_dir=folders.outputs,
                masks=any(ci.mask for ci in inputs),
                cases=len(cases),
                deadline_at=deadline_at,
                scratch=scratch,
                gpu=gpu,
                cpuset=cpuset or split_cpus(1)[0],
            )
            container = self._create(config, gpu)
            t_exit = self._start_and_watch(container, result, folders, on_output, gpu, t0)
            if t_exit is not None:
                result.oom_killed = _oom_killed(container)
                result.log_tail = _append_logs(container, result, log_fh)
            t_rm = time.monotonic()
            self._forget(container)
            container = None
            result.wall_s = ((t_exit or t_rm) - t0) + (time.monotonic() - t_rm)
            self._final_outputs(folders, result, on_output)
        except EngineSetupError:
            raise
        except (docker.errors.DockerException, RequestException, ContainerError) as exc:
            result.error = result.error or (str(exc) if isinstance(exc, ContainerError) else _one_line(exc))
        except OSError as exc:
            if exc.errno in DISK_FULL:  # the store's disk (work folders live there): the team stops
                raise
            result.error = result.error or _one_line(exc)
        finally:
            if container is not None:
                self._forget(container)
            if folders is not None:
                try:
                    folders.remove()
                except OSError as exc:
                    self.log(f"{image.team}: could not remove {folders.base} ({exc}); remove it as root")
        return result

    def _create(self, config: dict[str, Any], gpu: str | None) -> Any:
        import docker

        if self._stop.is_set():
            raise KeyboardInterrupt("runner stopping")
        try:
            container = self.client.containers.create(**config)
        except docker.errors.APIError as exc:
            raise api_error(exc, gpu) from exc
        with self._lock:
            self._live[container.id] = container
        return container

    def _start_and_watch(
        self,
        container: Any,
        result: ContainerResult,
        folders: RunFolders,
        on_output: OnOutput,
        gpu: str | None,
        t0: float,
    ) -> float | None:
        """Start the container and wait for its exit (killing it at its limit); the exit time, or None when
        it did not start (the reason in ``result.error``)."""
        import docker

        s = self.settings
        try:
            container.start()
        except docker.errors.APIError as exc:
            err = api_error(exc, gpu)
            if isinstance(err, EngineSetupError):
                raise err from exc
            # e.g. the image has no /bin/bash: this team's cases fail, the run goes on
            result.error = f"container did not start: {getattr(exc, 'explanation', None) or exc}"
            return None
        done = threading.Event()
        exit_box: dict[str, Any] = {}
        threading.Thread(target=_wait, args=(container, exit_box, done), daemon=True).start()

        def kill() -> None:
            result.timed_out = True
            with contextlib.suppress(Exception):
                container.kill()

        killer = threading.Timer(s.limit_s(len(result.cases)), kill)
        killer.daemon = True
        killer.start()
        if s.measure_memory:
            from ctfm.extract.containers.memory import sample_peak

            threading.Thread(target=sample_peak, args=(container, done, result), daemon=True).start()
        last: dict[str, tuple[int, int]] = {}  # the stamp of each output at the previous poll
        tried: dict[str, tuple[int, int]] = {}  # the version of each output already read
        try:
            while not done.wait(s.poll_s):
                if self._stop.is_set():
                    raise KeyboardInterrupt("runner stopping")
                if len(result.cases) > 1:
                    self._early_outputs(folders, result, on_output, last, tried, t0)
        finally:
            killer.cancel()
        t_exit = time.monotonic()
        result.exit_code = exit_box.get("code")
        result.error = exit_box.get("error", "")
        return t_exit

    def _early_outputs(
        self,
        folders: RunFolders,
        result: ContainerResult,
        on_output: OnOutput,
        last: dict[str, tuple[int, int]],
        tried: dict[str, tuple[int, int]],
        t0: float,
    ) -> None:
        """Take the outputs that are complete while a batch still runs: a file whose size and time did not
        change since the last poll, read once per version."""
        waiting = [c for c in result.cases if c not in result.taken]
        for case, stamp in present_outputs(folders.outputs, waiting).items():
            previous, last[case] = last.get(case), stamp
            if previous != stamp or tried.get(case) == stamp:
                continue
            tried[case] = stamp
            try:
                arr = self._read(folders, case)
            except OutputInvalid:
                continue  # maybe still being written: decided after the container exits
            result.taken[case] = stamp
            on_output(case, arr, time.monotonic() - t0)

    def _final_outputs(self, folders: RunFolders, result: ContainerResult, on_output: OnOutput) -> None:
        """Check every expected file once the container is gone; list (never read) everything else."""
        result.stray = stray_entries(folders.outputs, result.cases)
        for case, stamp in present_outputs(folders.outputs, result.cases).items():
            if result.taken.get(case) == stamp:
                continue
            result.taken.pop(case, None)
            try:
                arr = self._read(folders, case)
            except OutputInvalid as exc:
                result.invalid[case] = str(exc)
                continue
            on_output(case, arr, result.share_s)

    def _read(self, folders: RunFolders, case: str) -> np.ndarray:
        path = folders.outputs / f"{case}{OUTPUT_SUFFIX}"
        return check_output(
            path, folders.staging, self.settings.task, self.reader, self.settings.max_output_bytes
        )

    def _forget(self, container: Any) -> None:
        with self._lock:
            self._live.pop(container.id, None)
        with contextlib.suppress(Exception):
            container.remove(force=True)

    # -- a team --------------------------------------------------------------------------------------------
    def run_team(
        self,
        image: TeamImage,
        images_dir: Path,
        masks_dir: Path | None = None,
        view: str = "full",
        cases: Sequence[str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> TeamReport:
        """Run one team's image over ``images_dir`` into the store view; resumable per image id. A store
        that cannot be written (a full disk) ends this team with one line; the caller goes on."""
        from ctfm.extract.inputs import is_current
        from ctfm.store import Store

        s = self.settings
        report = TeamReport(
            team=image.team, task=s.task, view=view, image_id=image.image_id, image_size=image.size
        )
        try:
            store_view = Store(self.store_root).view(image.team, s.task, view)
            report.team = store_view.model
            with exclusive_use(store_view.dir):  # a second runner on this team's view is refused
                all_inputs, no_mask, refused = collect_inputs(images_dir, masks_dir, cases)
                todo = []
                for ci in all_inputs:
                    if not s.force and is_current(store_view, ci.case, ci.image, ci.mask, image.image_id):
                        report.skipped += 1
                        continue
                    todo.append(ci)
                if progress is not None and report.skipped:
                    progress(report.skipped)
                store_view.remove_abandoned()
                report.log_path = store_view.dir / "container.log"
                team = _TeamState(self, image, store_view, report, progress)
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
            self.log(f"{image.team}: {report.error}")
        return report


class _TeamState:
    """Ingestion for one team: D consistency, store writes (serialised), outcomes, retries, timing."""

    def __init__(
        self,
        runner: ContainerRunner,
        image: TeamImage,
        view: Any,
        report: TeamReport,
        progress: Callable[[int], None] | None,
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
        if new and self.progress is not None:
            self.progress(1)

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
                        self.fail(ci.case, "failed", f"runner error: {_one_line(exc)}", 0.0)

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


def _docker_name(team: str) -> str:
    clean = re.sub(r"[^a-zA-Z0-9_.-]+", "_", team).strip("._-")
    return clean[:40] or "team"


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _oom_killed(container: Any) -> bool:
    """Whether the engine killed the container for going over its memory limit (exit 137 alone could be
    any SIGKILL)."""
    with contextlib.suppress(Exception):
        container.reload()
        return bool(container.attrs["State"].get("OOMKilled"))
    return False


def _wait(container: Any, box: dict[str, Any], done: threading.Event) -> None:
    try:
        res = container.wait()
        box["code"] = int(res.get("StatusCode", -1))
        if res.get("Error"):
            box["error"] = str(res["Error"])
    except Exception as exc:
        box["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        done.set()


def _append_logs(container: Any, result: ContainerResult, fh: Any) -> str:
    """Append the container's output to the team's log; return its last lines for diagnostics."""
    logs = b""
    with contextlib.suppress(Exception):
        logs = container.logs(stdout=True, stderr=True)
    if fh is not None:
        with contextlib.suppress(OSError):
            head = (
                f"=== {result.name} cases={len(result.cases)} exit={result.exit_code} "
                f"timeout={result.timed_out}\n"
            )
            fh.write(head.encode() + logs + (b"" if logs.endswith(b"\n") or not logs else b"\n"))
            fh.flush()
    return logs[-LOG_TAIL_BYTES:].decode("utf-8", "replace")


# -- whole runs ----------------------------------------------------------------------------------------
def run_containers(
    store: Path,
    images_dir: Path,
    settings: RunSettings,
    tarballs_dir: Path | None = None,
    tags: Sequence[str] = (),
    masks_dir: Path | None = None,
    view: str = "full",
    cases: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> list[TeamReport]:
    """``ctfm extract --containers DIR | --image TAG``: every team, one after the other (chunks over GPUs).
    One team's broken tarball, refused container or unwritable store never stops the teams after it."""
    if tarballs_dir is None and not tags:
        raise ConfigError("pass --containers DIR (of <team>_lp.tar.gz / <team>_eao.tar.gz) or --image TAG")
    sources: list[tuple[str, Path | str]] = []
    if tarballs_dir is not None:
        found = tarballs.discover_tarballs(tarballs_dir, settings.task)
        sources += list(found.items())
    sources += [(tarballs.team_from_tag(tag), tag) for tag in tags]
    teams = [team for team, _ in sources]
    dupes = sorted({t for t in teams if teams.count(t) > 1})
    if dupes:
        raise ConfigError(
            f"two images map to team {dupes[0]!r} (one store model per team); give distinct names"
        )
    n_cases = len(cases) if cases is not None else len(_case_names(images_dir))
    say = log or (lambda m: None)
    reports = []
    with ContainerRunner(store, settings, log=log) as runner, _progress(progress) as bar:
        for team, source in sources:
            task_id = bar.add_task(team, total=n_cases) if bar else None
            try:
                if isinstance(source, Path):
                    image = runner.load_tarball(source, team)
                    for problem in tarballs.naming_problems(source, image.tags, settings.task):
                        say(f"{source.name}: the reference runner would not run it: {problem}")
                else:
                    image = runner.resolve_tag(source, team)
            except ContainerError as exc:  # one team's broken tarball must not stop the others
                say(f"{team}: {exc}")
                reports.append(TeamReport(team=team, task=settings.task, view=view, error=str(exc)))
                continue
            try:
                advance = (lambda n, t=task_id: bar.advance(t, n)) if bar else None
                reports.append(runner.run_team(image, images_dir, masks_dir, view, cases, advance))
            except EngineSetupError:
                raise
            except ContainerError as exc:  # the engine refused this team's container
                say(f"{team}: {exc}")
                reports.append(TeamReport(team=team, task=settings.task, view=view, error=str(exc)))
            finally:
                runner.release(image)
    return reports


def _case_names(images_dir: Path) -> list[str]:
    from ctfm.nifti import case_id, list_volumes

    return [case_id(p) for p in list_volumes(Path(images_dir))]


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from ctfm.progress import progress_bar

    with progress_bar("{task.description}") as bar:
        yield bar


def team_table(reports: Sequence[TeamReport]) -> Any:
    """The end-of-run table: team, ok, failed, timeout, skipped, median s/case, image size."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="container extraction")
    for col in ("team", "ok", "failed", "timeout", "skipped", "median s/case", "image size"):
        table.add_column(col, justify="left" if col == "team" else "right", overflow="fold")
    for r in reports:
        if r.error and not r.outcomes:
            table.add_row(escape(r.team), "-", "not run", "-", "-", "-", "-")
            continue
        table.add_row(
            escape(r.team),
            str(r.count("ok")),
            str(r.count("failed")),
            str(r.count("timeout")),
            str(r.skipped),
            "-" if r.median_s is None else f"{r.median_s:.2f}",
            human_bytes(r.image_size),
        )
    return table


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"
