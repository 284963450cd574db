"""Run untrusted team containers over the scans: isolated, timed, validated, resumable.

Each team image (a ``<team>_lp.tar.gz`` / ``<team>_eao.tar.gz`` tarball or a local tag) runs under the
benchmark's container contract (``configs/benchmark.yaml`` section ``container``) with: no network, a
read-only root file system plus a tmpfs ``/tmp``, only the chunk's images (and masks, as ``MASKS_DIR``) mounted
read-only, an empty output folder of its own, a non-root user, no capabilities, no new privileges, pid, memory
(swap equal) and shm limits, a CPU set, optional GPUs and a wall-clock limit. Every output is checked
(:mod:`ctfm.extract.validate`) and ingested into the store as soon as it is complete, so killing the runner
loses no finished case and a rerun skips what is already ``ok`` for the same image id.

Batched mode (default) starts one container per chunk of cases and watches the output folder: a case's time
is the gap since the previous case's file appeared; the start-up time (first file minus the typical gap) is
reported separately. ``per_case`` starts one container per case, like the reference runner. A case missing
after a batch is retried once on its own before it is declared failed (or ``timeout``).

Example:
    >>> runner = ContainerRunner(store_root=Path("store"), settings=RunSettings(task="lp"))  # doctest: +SKIP
    >>> with runner:  # doctest: +SKIP
    ...     report = runner.run_team(runner.load_tarball(Path("teams/acme_lp.tar.gz")), Path("images"))
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctfm.benchmark import configured, load_benchmark
from ctfm.errors import ConfigError, ContainerError, DataError
from ctfm.extract.validate import (
    DEFAULT_MAX_BYTES,
    OUTPUT_SUFFIX,
    OutputInvalid,
    ValidOutput,
    check_output,
    feature_dim,
)
from ctfm.fsutil import exclusive_use, link_or_copy, sha256_file

LABEL = "ctfm.runner"
LABEL_PID = "ctfm.pid"
LABEL_HOST = "ctfm.host"
LABEL_TEAM = "ctfm.team"
WORK_DIR = ".ctfm-work"
DISK_CHECK_S = 1.0  # how often a running container's output folder is measured
NOBODY = "65534:65534"
GPU_DRIVER_HINT = "could not select device driver"


@dataclass
class RunSettings:
    """Limits and mode of a container run. The same object drives ``extract`` and ``check-container``."""

    task: str = "lp"
    memory: str = field(default_factory=configured("container_limits", "memory", str))
    shm_size: str = "2g"
    tmp_size: str = "4g"
    pids_limit: int = 4096
    cpuset: str | None = None  # default: the CPUs of this process, split between concurrent GPU workers
    gpus: tuple[str, ...] = ()
    timeout_per_case: float = field(
        default_factory=configured("container_limits", "timeout_per_case_s", float)
    )
    batch_cases: int = 16
    per_case: bool = False
    user: str | None = None  # default: the invoking uid:gid, or nobody (65534) when running as root
    max_output_bytes: int = DEFAULT_MAX_BYTES
    keep_images: bool = False
    force: bool = False
    poll_s: float = 0.05
    measure_memory: bool = False
    log_max_size: str = "20m"

    def __post_init__(self) -> None:
        if self.task not in ("lp", "eao"):
            raise ConfigError(f"unknown task {self.task!r}; use lp or eao")
        if self.batch_cases < 1:
            raise ConfigError(f"--batch-cases must be at least 1, not {self.batch_cases}")
        if self.timeout_per_case <= 0:
            raise ConfigError(f"--timeout-per-case must be positive, not {self.timeout_per_case}")
        parse_bytes(self.memory)  # a bad --memory fails here, before any image is loaded
        if self.user is not None and not all(p.isdigit() for p in self.user.split(":", 1)):
            raise ConfigError(
                f"container user must be numeric uid[:gid] (e.g. 65534:65534), not {self.user!r}"
            )

    def container_user(self) -> str:
        if self.user:
            return self.user if ":" in self.user else f"{self.user}:{self.user}"
        return NOBODY if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"


@dataclass
class TeamImage:
    """A team's image as the engine knows it: the id is what the manifest records."""

    team: str
    image_id: str
    tags: list[str]
    size: int
    source: str  # tarball path or the tag given
    loaded: bool = False  # True when this runner added the image (removed afterwards unless kept)

    @property
    def ref(self) -> str:
        return self.image_id


@dataclass
class ContainerResult:
    """What one container did over its cases (before ingestion outcomes are known)."""

    name: str
    cases: list[str]
    exit_code: int | None = None
    timed_out: bool = False
    wall_s: float = 0.0
    arrivals: dict[str, float] = field(default_factory=dict)  # case -> seconds after start
    unexpected: list[str] = field(default_factory=list)
    peak_memory: int | None = None
    error: str = ""
    invalid: dict[str, str] = field(default_factory=dict)  # case -> why its final output was rejected
    oom_killed: bool = False

    def exit_reason(self, memory: str) -> str:
        """Why the container ended without all its outputs, as one phrase."""
        if self.error:
            return self.error
        if self.oom_killed:
            return f"container killed: out of memory (limit {memory})"
        return f"container exited with code {self.exit_code}"

    def case_seconds(self, case: str) -> float:
        """A case's time: the container's wall time alone; in a batch, the gap since the previous output."""
        if len(self.cases) == 1:
            return self.wall_s
        t = self.arrivals[case]
        earlier = [a for c, a in self.arrivals.items() if a < t or (a == t and c < case)]
        return t - max(earlier, default=0.0)


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
    startups: list[float] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    peak_memory: int | None = None
    log_path: Path | None = None
    timing_csv: Path | None = None
    error: str = ""  # the image could not be loaded: nothing ran

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes.values())

    @property
    def median_s(self) -> float | None:
        secs = [o.seconds for o in self.outcomes.values() if o.status == "ok"]
        return statistics.median(secs) if secs else None

    @property
    def startup_s(self) -> float | None:
        return statistics.median(self.startups) if self.startups else None

    @property
    def all_ok(self) -> bool:
        return not self.error and all(o.status == "ok" for o in self.outcomes.values())


# -- engine access -------------------------------------------------------------------------------------
def docker_client(timeout: int = 120) -> Any:
    """A docker SDK client; a clear :class:`ContainerError` when no engine answers."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:
        raise ContainerError(
            f"cannot reach the Docker engine ({type(exc).__name__}: {exc}); start dockerd or set DOCKER_HOST"
        ) from exc
    return client


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(client: Any) -> list[str]:
    """Remove ctfm containers left by runners of this host that are gone (SIGKILLed, crashed).

    Uses the low-level listing (labels included): containers removed meanwhile by a live runner cannot make
    it fail. Containers of live runners and of other hosts are left alone.
    """
    removed = []
    host = socket.gethostname()
    for c in client.api.containers(all=True, filters={"label": LABEL}):
        labels = c.get("Labels") or {}
        pid = labels.get(LABEL_PID, "")
        if labels.get(LABEL_HOST) != host or (pid.isdigit() and _pid_alive(int(pid))):
            continue
        with contextlib.suppress(Exception):
            client.api.remove_container(c["Id"], force=True)
            removed.append(",".join(n.lstrip("/") for n in c.get("Names") or []) or c["Id"][:12])
    return removed


def watch_runner(pid: int, store_root: str, poll_s: float = 1.0) -> None:
    """The watchdog, in a process of its own: once runner ``pid`` is gone without cleaning up (SIGKILL, OOM
    killer), remove its containers and work folders. The engine keeps a container running after its client
    dies, so without this a hung team container would outlive its time limit until the next run."""
    while _pid_alive(pid):
        time.sleep(poll_s)
    cleanup_stale(docker_client())
    cleanup_stale_work(Path(store_root))


def _start_watchdog(store_root: Path) -> subprocess.Popen:
    code = "import sys; from ctfm.extract.docker import watch_runner; watch_runner(int(sys.argv[1]), sys.argv[2])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen(
        [sys.executable, "-c", code, str(os.getpid()), str(store_root)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # a Ctrl-C of the runner's terminal must not stop it first
    )


def cleanup_stale_work(root: Path) -> None:
    """Remove work folders (``<pid>-<uuid>``) of runners that are gone."""
    base = Path(root) / WORK_DIR
    if not base.is_dir():
        return
    for d in base.iterdir():
        pid = d.name.split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def team_from_tag(tag: str) -> str:
    """``registry/ns/acme:v2`` -> ``acme``: a team name for an image given by tag."""
    name = tag.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0] or tag


def discover_tarballs(folder: Path, task: str) -> dict[str, Path]:
    """``<team>_<task>.tar.gz`` files of a submissions folder, by team; hidden files (a macOS ``._`` copy, a
    download's temporary) are no team's, as hidden files are no case's."""
    suffix = load_benchmark().section("container")["tarball_suffix"][task]
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of <team>{suffix} tarballs")
    found = {
        p.name[: -len(suffix)]: p
        for p in sorted(folder.glob(f"*{suffix}"))
        if p.is_file() and not p.name.startswith(".")
    }
    if not found:
        raise DataError(f"{folder}: no <team>{suffix} tarball found (task {task})")
    return found


def parse_bytes(text: str) -> int:
    """``32g``, ``512m``, ``1.5G``, ``1024`` -> bytes (docker's memory syntax)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().rstrip("b")
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        value = 0.0
    if value < 1:
        raise ConfigError(f"--memory {text!r} is not a size such as 32g or 512m")
    return int(value)


def _split_cpus(slots: int) -> list[str]:
    cpus = (
        sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else list(range(os.cpu_count() or 1))
    )
    if slots <= 1 or len(cpus) < slots:
        return [",".join(map(str, cpus))] * max(slots, 1)
    per = len(cpus) // slots
    return [",".join(map(str, cpus[i * per : (i + 1) * per])) for i in range(slots)]


# -- inputs --------------------------------------------------------------------------------------------
def _readable_by(path: Path, uid: int) -> bool:
    st = path.stat()
    return bool(st.st_mode & stat.S_IROTH) or (st.st_uid == uid and bool(st.st_mode & stat.S_IRUSR))


def place_input(src: Path, dest: Path, uid: int) -> None:
    """Hard-link an input into the container's folder (no copy); a copy, readable by the container user,
    across file systems or when that user could not read the original."""
    if not link_or_copy(src, dest, link=_readable_by(src, uid)):
        os.chmod(dest, 0o644)


@dataclass
class CaseInput:
    case: str
    image: Path
    mask: Path | None = None

    def inputs(self, image_id: str) -> str:
        """What this case's output is made from (see ``case_inputs``): its files and the team's image."""
        from ctfm.extract.inputs import case_inputs

        return case_inputs(self.image, self.mask, image_id)


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


# -- one container -------------------------------------------------------------------------------------
class ContainerRunner:
    """Runs team images; owns every container it starts and removes them on exit, Ctrl-C or SIGTERM."""

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
        self._watchdog: subprocess.Popen | None = None
        self.log = log or (lambda msg: None)
        self._live: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._ingest_lock = threading.Lock()
        self._stop = threading.Event()
        self._old_handlers: dict[int, Any] = {}
        self._hashes: dict[tuple[str, int, int], str] = {}
        self.work = self.store_root / WORK_DIR / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def input_sha256(self, path: Path) -> str:
        """sha256 of an input volume or mask, hashed once per run: every team and view reads the same inputs.
        Keyed by size and mtime too, so a file replaced during the run is hashed again."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = sha256_file(path)
        return self._hashes[key]

    # lifecycle
    def __enter__(self) -> ContainerRunner:
        for name in cleanup_stale(self.client):
            self.log(f"removed stale container {name}")
        cleanup_stale_work(self.store_root)
        self.work.mkdir(parents=True, exist_ok=True)
        os.chmod(self.work, 0o755)
        if self._watched:
            self._watchdog = _start_watchdog(self.store_root)
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
        """Remove every container still alive and the work folder; restore signal handlers.

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
        shutil.rmtree(self.work, ignore_errors=True)
        if self._watchdog is not None:
            self._watchdog.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watchdog.wait(5)
            self._watchdog = None
        for sig, handler in self._old_handlers.items():
            with contextlib.suppress(Exception):
                signal.signal(sig, handler)
        self._old_handlers.clear()

    # images
    def load_tarball(self, tarball: Path, team: str | None = None) -> TeamImage:
        """``docker load`` a tarball; the real tag and id come from the engine's answer."""
        import docker

        tarball = Path(tarball)
        if not tarball.is_file():
            raise DataError(f"{tarball}: tarball not found")
        before = {i.id: list(i.tags) for i in self.client.images.list(all=True)}
        try:
            with tarball.open("rb") as fh:
                images = self.client.images.load(fh)
        except (docker.errors.APIError, docker.errors.ImageLoadError) as exc:
            raise ContainerError(
                f"{tarball}: docker load failed ({exc}); is it a `docker save` tarball?"
            ) from exc
        if not images:
            raise ContainerError(f"{tarball}: docker load reported no image")
        img = images[0]
        if len(images) > 1:
            self.log(f"{tarball.name}: holds {len(images)} images; using the first ({img.id[:19]})")
        for extra in images[1:]:  # never run: its tags go back to their images and, if new, it goes
            self._restore_tags(tarball, extra, before)
            if extra.id not in before and extra.id != img.id:
                with contextlib.suppress(Exception):
                    self.client.images.remove(extra.id, force=True)
        name = team or tarball.name.split("_lp.tar")[0].split("_eao.tar")[0]
        return TeamImage(
            team=name,
            image_id=img.id,
            tags=self._restore_tags(tarball, img, before),
            size=int(img.attrs.get("Size", 0)),
            source=str(tarball),
            loaded=img.id not in before,
        )

    def _restore_tags(self, tarball: Path, img: Any, before: dict[str, list[str]]) -> list[str]:
        """``docker load`` moves any tag in the tarball onto its image: a team could take over another
        image's tag (an organizer's, another team's) and so be run, recorded or removed in its place. Tags
        that named another image before the load go back to it; the loaded image keeps only its own."""
        from docker.utils import parse_repository_tag

        owner = {tag: image_id for image_id, tags in before.items() for tag in tags}
        own = []
        for tag in img.tags:
            if owner.get(tag, img.id) == img.id:
                own.append(tag)
                continue
            self.client.api.tag(owner[tag], *parse_repository_tag(tag), force=True)
            self.log(f"{tarball.name}: its image claims tag {tag} of another image; the tag stays there")
        return own

    def resolve_tag(self, tag: str, team: str | None = None) -> TeamImage:
        import docker

        try:
            img = self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            raise ContainerError(
                f"image {tag!r} is not in the local engine; `docker load` it first"
            ) from None
        return TeamImage(
            team=team or team_from_tag(tag),
            image_id=img.id,
            tags=list(img.tags),
            size=int(img.attrs.get("Size", 0)),
            source=tag,
        )

    def release(self, image: TeamImage) -> None:
        """Remove an image this runner loaded, unless asked to keep it."""
        if image.loaded and not self.settings.keep_images:
            with contextlib.suppress(Exception):
                self.client.images.remove(image.image_id, force=True)

    # containers
    def _prepare(self, inputs: Sequence[CaseInput], name: str) -> tuple[Path, Path, Path]:
        uid, gid = (int(x) for x in self.settings.container_user().split(":"))
        base = self.work / name
        in_dir, out_dir, staging = base / "inputs", base / "outputs", base / "staging"
        in_dir.mkdir(parents=True)
        staging.mkdir()
        if any(ci.mask is not None for ci in inputs):
            (in_dir / "fg_masks").mkdir()
        for ci in inputs:
            place_input(ci.image, in_dir / ci.image.name, uid)
            if ci.mask is not None:
                place_input(ci.mask, in_dir / "fg_masks" / ci.image.name, uid)
        for d in (base, in_dir, *([in_dir / "fg_masks"] if (in_dir / "fg_masks").exists() else [])):
            os.chmod(d, 0o755)
        out_dir.mkdir(mode=0o700)
        if os.getuid() == 0:
            os.chown(out_dir, uid, gid)  # the non-root container user must be able to write it
        return in_dir, out_dir, staging

    def _create(
        self,
        image: TeamImage,
        name: str,
        in_dir: Path,
        out_dir: Path,
        has_masks: bool,
        gpu: str | None,
        cpuset: str,
    ) -> Any:
        from docker.types import DeviceRequest, LogConfig

        import docker

        if self._stop.is_set():
            raise KeyboardInterrupt("runner stopping")
        contract = load_benchmark().section("container")
        s = self.settings
        env = {"INPUT_DIR": contract["input_dir"], "OUTPUT_DIR": contract["output_dir"], "HOME": "/tmp"}
        if has_masks:
            env["MASKS_DIR"] = contract["masks_dir"]
        entry = contract["entrypoint"][s.task].split()
        mem = parse_bytes(s.memory)
        kwargs: dict[str, Any] = {
            "image": image.ref,
            "entrypoint": entry[:1],
            "command": entry[1:],
            "name": name,
            "labels": {
                LABEL: "1",
                LABEL_PID: str(os.getpid()),
                LABEL_HOST: socket.gethostname(),
                LABEL_TEAM: image.team,
            },
            "environment": env,
            "volumes": {
                str(in_dir): {"bind": contract["input_dir"], "mode": "ro"},
                str(out_dir): {"bind": contract["output_dir"], "mode": "rw"},
            },
            "network_mode": "none",
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={s.tmp_size}"},
            "user": s.container_user(),
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": s.pids_limit,
            "mem_limit": mem,
            "memswap_limit": mem,
            "shm_size": s.shm_size,
            "cpuset_cpus": cpuset,
            "init": True,
            "log_config": LogConfig(type="json-file", config={"max-size": s.log_max_size, "max-file": "1"}),
            "detach": True,
        }
        if gpu is not None:
            kwargs["device_requests"] = [DeviceRequest(device_ids=[gpu], capabilities=[["gpu"]])]
        try:
            container = self.client.containers.create(**kwargs)
        except docker.errors.APIError as exc:
            raise _api_error(exc, gpu) from exc
        with self._lock:
            self._live[container.id] = container
        return container

    def _forget(self, container: Any) -> None:
        with self._lock:
            self._live.pop(container.id, None)
        with contextlib.suppress(Exception):
            container.remove(force=True)

    def run_container(
        self,
        image: TeamImage,
        inputs: Sequence[CaseInput],
        on_valid: Callable[[ValidOutput, float], bool],
        log_fh: Any | None = None,
        gpu: str | None = None,
        cpuset: str | None = None,
    ) -> ContainerResult:
        """Run ``image`` once over ``inputs``; call ``on_valid(output, seconds)`` for each complete output.

        During the run a file is taken once its size and mtime are stable between polls and it validates;
        after exit every expected file is checked again (changed files are re-ingested). ``on_valid``
        returns False when it rejected the output (e.g. feature size), which marks it handled anyway.
        """
        import docker

        s = self.settings
        cases = [ci.case for ci in inputs]
        name = f"ctfm-{_docker_name(image.team)}-{uuid.uuid4().hex[:12]}"
        in_dir, out_dir, staging = self._prepare(inputs, name)
        result = ContainerResult(name=name, cases=cases)
        single = len(cases) == 1
        limit = s.timeout_per_case * len(cases)
        wanted = {f"{c}{OUTPUT_SUFFIX}": c for c in cases}
        taken: dict[str, tuple[int, int]] = {}  # case -> (size, mtime_ns) of the ingested file
        last_stat: dict[str, tuple[int, int]] = {}
        container = None
        t0 = time.monotonic()
        try:
            container = self._create(
                image, name, in_dir, out_dir, any(ci.mask for ci in inputs), gpu, cpuset or _split_cpus(1)[0]
            )
            done = threading.Event()
            exit_box: dict[str, Any] = {}
            try:
                container.start()
            except docker.errors.APIError as exc:
                err = _api_error(exc, gpu)
                if gpu is not None and "NVIDIA" in str(err):
                    raise err from exc
                # e.g. the image has no `sh` or a broken entry: this team's cases fail, the run goes on
                result.error = f"container did not start: {getattr(exc, 'explanation', None) or exc}"
                return result
            waiter = threading.Thread(target=_wait, args=(container, exit_box, done), daemon=True)
            waiter.start()
            sampler = None
            if s.measure_memory:
                sampler = threading.Thread(target=_sample_memory, args=(container, result, done), daemon=True)
                sampler.start()
            stopped, next_disk_check = "", 0.0
            while True:
                finished = done.wait(s.poll_s)
                now = time.monotonic() - t0
                if self._stop.is_set():
                    raise KeyboardInterrupt("runner stopping")
                if not single:
                    self._poll_outputs(out_dir, wanted, result, taken, last_stat, staging, on_valid, now)
                if finished:
                    break
                if now >= next_disk_check:
                    next_disk_check = now + DISK_CHECK_S
                    stopped = _over_disk_budget(out_dir, s.max_output_bytes * len(cases))
                result.timed_out = now > limit
                if stopped or result.timed_out:
                    with contextlib.suppress(Exception):
                        container.kill()
                    done.wait(30)
                    break
            result.wall_s = time.monotonic() - t0
            result.exit_code = exit_box.get("code")
            result.error = stopped or exit_box.get("error", "")
            result.oom_killed = _oom_killed(container)
            if sampler is not None:
                sampler.join(2)
            self._final_outputs(out_dir, wanted, result, taken, staging, on_valid)
            if log_fh is not None:
                _append_logs(container, result, log_fh)
        except ContainerError:
            raise
        except docker.errors.APIError as exc:
            result.error = f"engine error: {exc}"
        finally:
            if container is not None:
                self._forget(container)
            shutil.rmtree(in_dir, ignore_errors=True)
            shutil.rmtree(out_dir, ignore_errors=True)
        return result

    def _poll_outputs(
        self,
        out_dir: Path,
        wanted: dict[str, str],
        result: ContainerResult,
        taken: dict,
        last_stat: dict,
        staging: Path,
        on_valid: Callable,
        now: float,
    ) -> None:
        with os.scandir(out_dir) as it:
            entries = [e for e in it if e.name in wanted]
        for e in entries:
            case = wanted[e.name]
            result.arrivals.setdefault(case, now)
            if case in taken:
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            key = (st.st_size, st.st_mtime_ns)
            if last_stat.get(case) != key:
                last_stat[case] = key
                continue
            try:
                out = check_output(Path(e.path), staging, self.settings.task, self.settings.max_output_bytes)
            except OutputInvalid:
                continue  # maybe still being written: decided after the container exits
            taken[case] = key
            on_valid(out, result.case_seconds(case))

    def _final_outputs(
        self,
        out_dir: Path,
        wanted: dict[str, str],
        result: ContainerResult,
        taken: dict,
        staging: Path,
        on_valid: Callable,
    ) -> None:
        present = sorted(os.listdir(out_dir))
        result.unexpected = [n for n in present if n not in wanted]
        for fname in present:
            case = wanted.get(fname)
            if case is None:
                continue
            result.arrivals.setdefault(case, result.wall_s)
            path = out_dir / fname
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if taken.get(case) == (st.st_size, st.st_mtime_ns):
                continue
            try:
                out = check_output(path, staging, self.settings.task, self.settings.max_output_bytes)
            except OutputInvalid as exc:
                result.invalid[case] = str(exc)
                continue
            taken[case] = (st.st_size, st.st_mtime_ns)
            on_valid(out, result.case_seconds(case))

    # -- a team -------------------------------------------------------------------------------------------
    def run_team(
        self,
        image: TeamImage,
        images_dir: Path,
        masks_dir: Path | None = None,
        view: str = "full",
        cases: Sequence[str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> TeamReport:
        """Run one team's image over ``images_dir`` into the store view; resumable per image id."""
        from ctfm.extract.inputs import is_current
        from ctfm.store import Store

        s = self.settings
        store_view = Store(self.store_root).view(image.team, s.task, view)
        with exclusive_use(store_view.dir):  # a second runner on this team's view is refused
            all_inputs, no_mask, refused = collect_inputs(images_dir, masks_dir, cases)
            report = TeamReport(
                team=store_view.model, task=s.task, view=view, image_id=image.image_id, image_size=image.size
            )
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
                team._set(CaseOutcome(case, "failed", 0.0, why))
            for case, why in refused.items():  # no store record can be named after them
                team._set(CaseOutcome(case, "failed", 0.0, why))
            slots = list(s.gpus) or [None]
            cpusets = [s.cpuset] * len(slots) if s.cpuset else _split_cpus(len(slots))
            chunks = [[ci] for ci in todo] if s.per_case else _chunks(todo, s.batch_cases)
            with report.log_path.open("ab") as log_fh:
                team.log_fh = log_fh
                _run_parallel(
                    chunks, slots, cpusets, lambda chunk, gpu, cpus: team.run_chunk(chunk, gpu, cpus)
                )
            if report.outcomes:
                report.timing_csv = store_view.write_timing_csv(image.team)
            return report


class _TeamState:
    """Ingestion for one team: D consistency, store writes (serialised), outcomes, retries."""

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

    def ingest(self, out: ValidOutput, seconds: float) -> bool:
        from ctfm.errors import StoreError
        from ctfm.store import CaseRecord

        fields = self._record_fields(self.by_case[out.case])  # hashing stays outside the lock
        with self.runner._ingest_lock:
            if self.dim is not None and feature_dim(out.y_hat) != self.dim:
                self._fail(
                    out.case,
                    "failed",
                    f"feature size {feature_dim(out.y_hat)} differs from {self.dim} of this team's other cases",
                    seconds,
                )
                return False
            record = CaseRecord(case=out.case, status="ok", seconds=round(seconds, 4), **fields)
            try:
                self.view.import_file(out.case, out.path, record)
            except StoreError as exc:
                self._fail(out.case, "failed", str(exc), seconds)
                return False
            if self.dim is None:
                self.dim = feature_dim(out.y_hat)
            self._set(CaseOutcome(out.case, "ok", seconds))
        return True

    def _fail(self, case: str, status: str, error: str, seconds: float) -> None:
        """Record a failed case with the seconds it used."""
        fields = self._record_fields(self.by_case[case])
        self.view.record_failure(case, status, error, seconds=round(seconds, 4), **fields)
        self._set(CaseOutcome(case, status, seconds, error))

    def _set(self, outcome: CaseOutcome) -> None:
        new = outcome.case not in self.report.outcomes
        self.report.outcomes[outcome.case] = outcome
        if new and self.progress is not None:
            self.progress(1)

    def run_chunk(self, chunk: list[CaseInput], gpu: str | None, cpuset: str) -> None:
        for ci in chunk:
            self.by_case[ci.case] = ci
        result = self.runner.run_container(self.image, chunk, self.ingest, self.log_fh, gpu, cpuset)
        self._note(result)
        if len(chunk) > 1:
            self._correct_startup(result)
        shutil.rmtree(self.runner.work / result.name, ignore_errors=True)
        for case, reason in result.invalid.items():
            with self.runner._ingest_lock:
                self._fail(case, "failed", reason, result.case_seconds(case))
        missing = [ci for ci in chunk if ci.case not in self.report.outcomes]
        if len(chunk) > 1:
            for ci in missing:  # one retry alone: a crash or hang on one case must not cost the others
                self.runner.log(f"{self.image.team}: {ci.case} missing after its batch; retrying it alone")
                retry = self.runner.run_container(self.image, [ci], self.ingest, self.log_fh, gpu, cpuset)
                self._note(retry)
                self._settle([ci], retry)
                shutil.rmtree(self.runner.work / retry.name, ignore_errors=True)
        else:
            self._settle(missing, result)

    def _settle(self, missing: list[CaseInput], result: ContainerResult) -> None:
        """Fail the cases a one-case container left without a valid output, with its wall time."""
        invalid = result.invalid
        seconds = result.wall_s
        for ci in missing:
            if ci.case in self.report.outcomes:
                continue
            with self.runner._ingest_lock:
                if ci.case in invalid:
                    self._fail(ci.case, "failed", invalid[ci.case], seconds)
                elif result.timed_out:
                    limit = self.runner.settings.timeout_per_case
                    self._fail(ci.case, "timeout", f"no output within {limit:g} s; container killed", seconds)
                else:
                    why = result.exit_reason(self.runner.settings.memory)
                    self._fail(ci.case, "failed", f"no output ({why}); see {self.report.log_path}", seconds)

    def _note(self, result: ContainerResult) -> None:
        if result.unexpected:
            names = ", ".join(result.unexpected[:10])
            self.runner.log(f"{self.image.team}: {result.name} left unexpected files (not copied): {names}")
            self.report.unexpected.extend(result.unexpected)
        if result.peak_memory is not None:
            self.report.peak_memory = max(self.report.peak_memory or 0, result.peak_memory)

    def _correct_startup(self, result: ContainerResult) -> None:
        """Split the first case's time into start-up and work: start-up = first file - the median gap."""
        order = sorted(result.arrivals.items(), key=lambda kv: (kv[1], kv[0]))
        if len(order) < 2:
            return
        times = [t for _, t in order]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        startup = max(0.0, times[0] - statistics.median(gaps))
        self.report.startups.append(startup)
        first = self.report.outcomes.get(order[0][0])
        if first is not None and first.status == "ok" and startup > 0:
            with self.runner._ingest_lock:
                rec = self.view.retime(first.case, times[0] - startup)
                first.seconds = rec.seconds


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
    import re

    clean = re.sub(r"[^a-zA-Z0-9_.-]+", "_", team).strip("._-")
    return clean[:40] or "team"


def _api_error(exc: Exception, gpu: str | None) -> Exception:
    text = str(exc)
    if gpu is not None and (GPU_DRIVER_HINT in text or "nvidia" in text.lower()):
        return ContainerError(
            f"--gpus {gpu}: the Docker engine has no NVIDIA runtime ({text.strip()}); install "
            "nvidia-container-toolkit and restart dockerd, or run without --gpus"
        )
    return ContainerError(f"the Docker engine refused the container: {text.strip()}")


def _oom_killed(container: Any) -> bool:
    """Whether the engine killed the container for going over its memory limit (exit 137 alone could be
    any SIGKILL)."""
    with contextlib.suppress(Exception):
        container.reload()
        return bool(container.attrs["State"].get("OOMKilled"))
    return False


def _over_disk_budget(out_dir: Path, budget: int, max_entries: int = 100_000) -> str:
    """Why a container's output folder is over budget (disk blocks used, or entries), else ''. The folder is
    on the host's disk: without this a container could fill it and stop the whole run."""
    used = entries = 0
    for root, dirs, files in os.walk(out_dir):  # never follows links
        for name in dirs + files:
            entries += 1
            with contextlib.suppress(OSError):
                used += os.lstat(os.path.join(root, name)).st_blocks * 512
        if used > budget:
            return f"wrote over {budget} bytes into its output folder; container stopped"
        if entries > max_entries:
            return f"wrote over {max_entries} files into its output folder; container stopped"
    return ""


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


def _sample_memory(container: Any, result: ContainerResult, done: threading.Event) -> None:
    """Peak memory of the container's cgroup while it runs.

    Where this host sees the cgroup (a local engine), its kernel peak counter is read every 50 ms, so the
    figure misses at most the last 50 ms of a run. Otherwise the engine's stats are sampled: they answer
    about once a second, so they miss short runs (cgroup v1 still reports the peak between samples).
    """
    peak_file = _cgroup_peak_file(container)
    while not done.is_set():
        with contextlib.suppress(Exception):
            peak = int(peak_file.read_text()) if peak_file is not None else _engine_peak(container)
            if peak:
                result.peak_memory = max(result.peak_memory or 0, peak)
        done.wait(0.05 if peak_file is not None else 0.2)


def _engine_peak(container: Any) -> int:
    mem = container.stats(stream=False, one_shot=True).get("memory_stats", {})
    return max(int(mem.get("max_usage", 0) or 0), int(mem.get("usage", 0) or 0))


def _cgroup_peak_file(
    container: Any, proc: Path = Path("/proc"), cgroupfs: Path = Path("/sys/fs/cgroup")
) -> Path | None:
    """The running container's kernel memory peak file (v1 ``memory.max_usage_in_bytes``, v2
    ``memory.peak``), found through its init process; None when this host cannot see it (a remote engine,
    another pid namespace, a container already gone). The container id must be in the cgroup path, so
    another process that happens to have the same pid here is never read."""
    with contextlib.suppress(Exception):
        container.reload()
        pid = int(container.attrs["State"]["Pid"])
        for line in (proc / str(pid) / "cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if container.id not in path:
                continue
            if "memory" in controllers.split(","):  # cgroup v1
                candidate = cgroupfs / "memory" / path.lstrip("/") / "memory.max_usage_in_bytes"
            elif not controllers:  # cgroup v2 (kernel 5.19+ keeps the peak)
                candidate = cgroupfs / path.lstrip("/") / "memory.peak"
            else:
                continue
            if candidate.is_file():
                return candidate
    return None


def _append_logs(container: Any, result: ContainerResult, fh: Any) -> None:
    with contextlib.suppress(Exception):
        logs = container.logs(stdout=True, stderr=True)
        head = (
            f"=== {result.name} cases={len(result.cases)} exit={result.exit_code} "
            f"timeout={result.timed_out} wall={result.wall_s:.2f}s\n"
        )
        fh.write(head.encode() + logs + (b"" if logs.endswith(b"\n") or not logs else b"\n"))
        fh.flush()


@contextlib.contextmanager
def temporary_folder(prefix: str = "ctfm-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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
    """``ctfm extract --containers DIR | --image TAG``: every team, one after the other (chunks over GPUs)."""
    if tarballs_dir is None and not tags:
        raise ConfigError("pass --containers DIR (of <team>_lp.tar.gz / <team>_eao.tar.gz) or --image TAG")
    sources: list[tuple[str, Path | str]] = []
    if tarballs_dir is not None:
        sources += [(team, path) for team, path in discover_tarballs(tarballs_dir, settings.task).items()]
    sources += [(team_from_tag(tag), tag) for tag in tags]
    teams = [team for team, _ in sources]
    dupes = sorted({t for t in teams if teams.count(t) > 1})
    if dupes:
        raise ConfigError(
            f"two images map to team {dupes[0]!r} (one store model per team); give distinct names"
        )
    n_cases = len(cases) if cases is not None else len(_case_names(images_dir))
    reports = []
    with ContainerRunner(store, settings, log=log) as runner, _progress(progress) as bar:
        for team, source in sources:
            task_id = bar.add_task(team, total=n_cases) if bar else None
            try:
                image = (
                    runner.load_tarball(source, team)
                    if isinstance(source, Path)
                    else runner.resolve_tag(source, team)
                )
            except ContainerError as exc:  # one team's broken tarball must not stop the others
                (log or (lambda m: None))(f"{team}: {exc}")
                reports.append(TeamReport(team=team, task=settings.task, view=view, error=str(exc)))
                continue
            try:
                advance = (lambda n, t=task_id: bar.advance(t, n)) if bar else None
                reports.append(runner.run_team(image, images_dir, masks_dir, view, cases, advance))
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
    """The end-of-run table: team, ok, failed, timeout, median s/case, start-up s, image size."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="container extraction")
    for col in ("team", "ok", "failed", "timeout", "skipped", "median s/case", "start-up s", "image size"):
        table.add_column(col, justify="left" if col == "team" else "right", overflow="fold")
    for r in reports:
        if r.error:
            table.add_row(escape(r.team), "-", "not run", "-", "-", "-", "-", "-")
            continue
        table.add_row(
            escape(r.team),
            str(r.count("ok")),
            str(r.count("failed")),
            str(r.count("timeout")),
            str(r.skipped),
            "-" if r.median_s is None else f"{r.median_s:.2f}",
            "-" if r.startup_s is None else f"{r.startup_s:.2f}",
            _human(r.image_size),
        )
    return table


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


# -- check-container -----------------------------------------------------------------------------------
@dataclass
class CheckItem:
    name: str
    passed: bool
    detail: str


@dataclass
class CheckReport:
    """``ctfm check-container``: one line per check, and the measured figures."""

    image: TeamImage
    cases: int
    items: list[CheckItem] = field(default_factory=list)
    seconds_per_case: float | None = None
    peak_memory: int | None = None

    @property
    def passed(self) -> bool:
        return bool(self.items) and all(i.passed for i in self.items)

    def add(self, name: str, passed: bool, detail: str) -> None:
        self.items.append(CheckItem(name, passed, detail))


def check_container(
    source: str | Path,
    images_dir: Path,
    settings: RunSettings,
    masks_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
    log_path: Path | None = None,
) -> CheckReport:
    """Dry-run an image twice under the production settings: batched over all cases, then one per case.

    Checks the contract (exit code, no timeout, only expected files), valid outputs, non-degenerate
    embeddings, determinism between the two runs, time per case against the limit and peak memory.
    """
    import numpy as np

    from ctfm.extract.validate import embedding_problems

    settings = dataclasses.replace(settings, measure_memory=True)
    with temporary_folder("ctfm-check-") as tmp:
        runner = ContainerRunner(tmp / "work", settings, log=log)
        with runner:
            src = Path(source)
            image = (
                runner.load_tarball(src)
                if src.suffix == ".gz" or src.is_file()
                else runner.resolve_tag(str(source))
            )
            try:
                inputs, no_mask, refused = collect_inputs(images_dir, masks_dir)
                runs: list[dict[str, np.ndarray]] = [{}, {}]
                times: dict[str, float] = {}
                results: list[ContainerResult] = []
                log_file = log_path or (tmp / "container.log")
                with Path(log_file).open("ab") as fh:

                    def first(out: ValidOutput, seconds: float) -> bool:
                        runs[0][out.case] = out.y_hat
                        return True

                    gpu = settings.gpus[0] if settings.gpus else None
                    results.append(runner.run_container(image, inputs, first, fh, gpu, settings.cpuset))
                    for ci in inputs:

                        def second(out: ValidOutput, seconds: float) -> bool:
                            runs[1][out.case] = out.y_hat
                            times[out.case] = seconds
                            return True

                        results.append(runner.run_container(image, [ci], second, fh, gpu, settings.cpuset))
            finally:
                runner.release(image)
    report = CheckReport(image=image, cases=len(inputs) + len(no_mask) + len(refused))
    _judge(report, settings, inputs, no_mask, refused, runs, times, results, embedding_problems)
    return report


def _judge(
    report: CheckReport,
    settings: RunSettings,
    inputs: list[CaseInput],
    no_mask: dict[str, str],
    refused: dict[str, str],
    runs: list[dict[str, Any]],
    times: dict[str, float],
    results: list[ContainerResult],
    embedding_problems: Callable[[dict[str, Any]], list[str]],
) -> None:
    import numpy as np

    cases = [ci.case for ci in inputs]
    bad_exit = [
        f"{r.name}: {r.exit_reason(settings.memory)}"
        for r in results
        if (r.exit_code not in (0,) or r.error) and not r.timed_out
    ]
    timeouts = [", ".join(r.cases) for r in results if r.timed_out]
    unexpected = sorted({n for r in results for n in r.unexpected})
    problems = bad_exit + [f"timeout on {t}" for t in timeouts]
    if unexpected:
        problems.append(f"unexpected files {', '.join(unexpected[:5])}")
    if no_mask:
        problems.append(f"no mask for {', '.join(sorted(no_mask))}")
    problems += [f"not run: {why}" for why in refused.values()]
    report.add("contract", not problems, "; ".join(problems) or "exit 0, no timeout, only <case>.h5 written")
    invalid = {c: why for r in results for c, why in r.invalid.items()}
    missing = [c for c in cases if c not in invalid and (c not in runs[0] or c not in runs[1])]
    detail = "; ".join(
        [f"{c}: {w}" for c, w in sorted(invalid.items())] + [f"{c}: no output" for c in missing]
    )
    report.add("outputs valid", not invalid and not missing, detail or f"{len(cases)} cases x 2 runs valid")
    arrays = runs[0]
    dims = sorted({int(a.shape[0]) for a in arrays.values()})
    none = "no valid output to judge"
    sizes = f"D = {dims[0]}" if len(dims) == 1 else f"D values {', '.join(map(str, dims))}" if dims else none
    report.add("one feature size", len(dims) == 1, sizes)
    degenerate = embedding_problems(arrays) if arrays else [none]
    report.add(
        "embeddings informative", not degenerate, "; ".join(degenerate) or "not constant, not collapsed"
    )
    diffs = {}
    for c in cases:
        a, b = runs[0].get(c), runs[1].get(c)
        if a is not None and b is not None:
            diffs[c] = float(np.max(np.abs(a.astype(np.float64) - b))) if a.shape == b.shape else float("inf")
    worst = max(diffs.values(), default=0.0)
    same = all(
        runs[0][c].shape == runs[1][c].shape and np.allclose(runs[0][c], runs[1][c], rtol=1e-5, atol=1e-6)
        for c in diffs
    )
    report.add(
        "deterministic", bool(diffs) and same, f"max |run1 - run2| = {worst:.3g} over {len(diffs)} cases"
    )
    if times:
        report.seconds_per_case = max(times.values())
        report.add(
            "time per case",
            report.seconds_per_case <= settings.timeout_per_case,
            f"max {report.seconds_per_case:.2f} s (one container per case) vs limit {settings.timeout_per_case:g} s",
        )
    peaks = [r.peak_memory for r in results if r.peak_memory]
    report.peak_memory = max(peaks) if peaks else None
    limit = parse_bytes(settings.memory)
    oom = [r.name for r in results if r.oom_killed]
    report.add(
        "peak memory",
        not oom and (report.peak_memory is None or report.peak_memory <= limit),
        (f"out of memory in {len(oom)} run(s); " if oom else "")
        + ("not measured (runs too short)" if report.peak_memory is None else _human(report.peak_memory))
        + f" vs limit {settings.memory}",
    )
