"""One team container at a time: started as the reference starts it, confined, watched, timed, read back.

:class:`ContainerRunner` owns every container, folder and image it adds. A container gets the chunk's images
in ``/workspace/inputs`` (read-only; masks in ``fg_masks/`` and ``MASKS_DIR`` for an ROI disease), an empty,
size-capped ``/workspace/outputs`` and its image's scratch (:mod:`~ctfm.extract.containers.scratch`), and runs
the reference command under the settings of :mod:`~ctfm.extract.containers.engine`. Each output is read as
untrusted (:mod:`ctfm.store.untrusted`) and handed over as soon as it is complete; nothing a container writes can
raise out of the runner: whatever goes wrong becomes that container's result. A team's cases, retries and
store writes are :mod:`~ctfm.extract.containers.teams`.

A container's wall time runs from its creation until it has exited and been removed, start-up included, as
the reference times ``docker container run --rm``.

Example:
    >>> with ContainerRunner(Path("store"), RunSettings(task="lp")) as runner:  # doctest: +SKIP
    ...     image = runner.load_tarball(Path("teams/acme_lp.tar.gz"))
    ...     result = runner.run_container(image, inputs, lambda case, y_hat, seconds: True)
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctfm.core.errors import ContainerError, InvalidEmbedding
from ctfm.core.hashing import sha256_file
from ctfm.extract.containers import cleanup, tarballs
from ctfm.extract.containers.engine import (
    Engine,
    EngineSetupError,
    RunSettings,
    api_error,
    container_config,
    docker_client,
    split_cpus,
)
from ctfm.extract.containers.folders import CaseInput, RunFolders, remove_tree
from ctfm.extract.containers.outputs import OUTPUT_SUFFIX, present_outputs, stray_entries
from ctfm.extract.containers.scratch import Scratch, plan_scratch
from ctfm.extract.containers.tarballs import TeamImage
from ctfm.store.untrusted import H5Reader

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
    hint: str = ""  # what its log says it ran into (a read-only folder, a full scratch)

    def exit_reason(self, memory: str) -> str:
        """Why the container ended without all its outputs, as one phrase."""
        if self.error:
            return self.error
        if self.oom_killed:
            return f"container killed: out of memory (limit {memory})"
        return f"container exited with code {self.exit_code}" + (f"; {self.hint}" if self.hint else "")

    @property
    def share_s(self) -> float:
        """Each case's part of the container's wall time."""
        return self.wall_s / max(len(self.cases), 1)


class ContainerRunner:
    """Runs team images; owns every container, volume, folder, mount and image it adds and removes them on
    exit, Ctrl-C or SIGTERM (and, through its watchdog and the containers' own deadlines, after SIGKILL)."""

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
        self.reader = H5Reader(settings.read_timeout_s)
        self.work = self.store_root / cleanup.WORK_DIR / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._engine: Engine | None = None
        self._scratch: dict[str, Scratch | ContainerError] = {}  # by image id
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

        Besides the containers it knows, it removes any container or volume labelled with this process id: one
        whose create call was interrupted by a signal exists in the engine although the runner never got its id.
        """
        self._stop.set()
        with self._lock:
            live = list(self._live.values())
            self._live.clear()
        for c in live:
            with contextlib.suppress(Exception):
                c.remove(force=True)
        with contextlib.suppress(Exception):
            cleanup.remove_own(self.client)
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
        """Remove the copies made for an image's scratch, and the image if this runner loaded it (unless
        asked to keep it)."""
        with self._lock:
            scratch = self._scratch.pop(image.image_id, None)
        if isinstance(scratch, Scratch):
            try:
                scratch.release()
            except OSError as exc:
                self.log(f"{image.team}: could not remove the copies of its scratch folders ({exc})")
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

    def scratch(self, image: TeamImage) -> Scratch:
        """The image's scratch, planned (and its folders copied) once per image; a failure is kept, so every
        container of the image fails with it at once."""
        engine = self.engine(image)
        with self._lock:
            if image.image_id not in self._scratch:
                try:
                    self._scratch[image.image_id] = plan_scratch(
                        self.client, engine, image, self.settings, self.work
                    )
                except ContainerError as exc:
                    self._scratch[image.image_id] = exc
                else:
                    if self._scratch[image.image_id].note:
                        self.log(self._scratch[image.image_id].note)
            planned = self._scratch[image.image_id]
        if isinstance(planned, ContainerError):
            raise planned
        return planned

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
            scratch = self.scratch(image)
            folders = RunFolders.prepare(
                self.work / name,
                inputs,
                engine.mount_outputs,
                s.max_output_bytes * len(cases),
                s.max_output_files,
            )
            folders.overlay(scratch.overlays, scratch.size)
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
                scratch=scratch.options,
                gpu=gpu,
                cpuset=cpuset or split_cpus(1)[0],
                binds=folders.binds,
            )
            container = self._create(config, gpu)
            t_exit = self._start_and_watch(container, result, folders, on_output, gpu, t0)
            if t_exit is not None:
                result.oom_killed = _oom_killed(container)
                result.log_tail = _append_logs(container, result, log_fh)
                result.hint = scratch.hint(result.log_tail, s)
            t_rm = time.monotonic()
            self._forget(container)
            container = None
            result.wall_s = ((t_exit or t_rm) - t0) + (time.monotonic() - t_rm)
            self._final_outputs(folders, result, on_output)
        except EngineSetupError:
            raise
        except (docker.errors.DockerException, RequestException, ContainerError) as exc:
            result.error = result.error or (str(exc) if isinstance(exc, ContainerError) else one_line(exc))
        except OSError as exc:
            if exc.errno in DISK_FULL:  # the store's disk (work folders live there): the team stops
                raise
            result.error = result.error or one_line(exc)
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
            except InvalidEmbedding:
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
            except InvalidEmbedding as exc:
                result.invalid[case] = str(exc)
                continue
            on_output(case, arr, result.share_s)

    def _read(self, folders: RunFolders, case: str) -> np.ndarray:
        path = folders.outputs / f"{case}{OUTPUT_SUFFIX}"
        return self.reader.read_file(
            path, self.settings.task, folders.staging, self.settings.max_output_bytes
        )

    def _forget(self, container: Any) -> None:
        with self._lock:
            self._live.pop(container.id, None)
        with contextlib.suppress(Exception):
            container.remove(force=True)


def _docker_name(team: str) -> str:
    clean = re.sub(r"[^a-zA-Z0-9_.-]+", "_", team).strip("._-")
    return clean[:40] or "team"


def one_line(exc: BaseException) -> str:
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
