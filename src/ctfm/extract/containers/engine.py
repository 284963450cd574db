"""The Docker engine as ctfm uses it: the client, what the engine can enforce, and a container's settings.

A team container gets what the reference runner gives it (``configs/benchmark.yaml`` section ``container``):
its image's entrypoint with the command ``/bin/bash -c "sh extract_feat_LP.sh"``, the image's working
directory and user, ``/workspace/inputs`` and ``/workspace/outputs`` mounted, ``MASKS_DIR`` for ROI diseases
and nothing else in its environment, a writable file system. ctfm adds confinement that a valid container
does not notice: no network, no capabilities, no new privileges, read-only inputs, pid, memory (swap equal)
and CPU limits, a wall-clock limit enforced inside the container too, and a kernel-enforced size for what it
writes. How that size is enforced depends on the engine (:class:`Engine`):

- engines whose storage can cap a container's writable layer (``--storage-opt size``: overlay2 on xfs with
  ``pquota``, btrfs, zfs) give it a writable image, exactly as the reference does, capped at ``scratch``;
- other engines give it a read-only image with size-limited tmpfs scratch at ``/tmp`` and ``$HOME`` (exec
  allowed, mode 1777), and say so once at start.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctfm.benchmark import configured, load_benchmark
from ctfm.errors import ConfigError, ContainerError

if TYPE_CHECKING:
    from ctfm.extract.containers.tarballs import TeamImage

LABEL = "ctfm.runner"
LABEL_PID = "ctfm.pid"
LABEL_HOST = "ctfm.host"
LABEL_TEAM = "ctfm.team"
LABEL_DEADLINE = "ctfm.deadline"  # epoch seconds after which the container is over its limit
GPU_DRIVER_HINT = "could not select device driver"
# The container's own deadline: a background subshell (bash builtins only: `read -t` on a pipe it holds both
# ends of sleeps without `sleep`) SIGKILLs every process but the init when the deadline passes, then the
# reference command is exec'd unchanged. The engine's init (PID 1) then exits, and the container with it,
# even when no ctfm process is left to stop it.
DEADLINE_SH = 'd=$1; shift; (read -t "$d" <> <(:); kill -KILL -1) & exec "$@"'
QUOTA_DRIVERS = ("btrfs", "zfs")  # their size counts the image's own files too
PASSWD_MAX_BYTES = 1 << 20
# Shadowing these with an empty $HOME changes nothing for `bash -c` (non-interactive, no login).
SHELL_DOTFILES = frozenset({".bashrc", ".profile", ".bash_logout", ".bash_profile", ".cshrc", ".tcshrc"})


@dataclass
class RunSettings:
    """Limits and mode of a container run. The same object drives ``extract`` and ``check-container``."""

    task: str = "lp"
    memory: str = field(default_factory=configured("container_limits", "memory", str))
    scratch: str = field(default_factory=configured("container_limits", "scratch", str))
    shm_size: str = "2g"
    pids_limit: int = 4096
    cpuset: str | None = None  # default: the CPUs of this process, split between concurrent GPU workers
    gpus: tuple[str, ...] = ()
    timeout_per_case: float = field(
        default_factory=configured("container_limits", "timeout_per_case_s", float)
    )
    batch_cases: int = 16
    per_case: bool = False
    max_output_bytes: int = 1 << 30  # one case's output file; the output folder holds this per case
    max_output_files: int = 100_000  # inodes of the output folder
    read_timeout_s: float = 60.0  # reading one output file, whatever its HDF5 layout
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
        parse_bytes(self.memory, "--memory")  # a bad size fails here, before any image is loaded
        parse_bytes(self.scratch, "--scratch")

    def limit_s(self, cases: int) -> float:
        """The wall-clock limit of one container over ``cases`` cases."""
        return self.timeout_per_case * cases

    def deadline_s(self, cases: int) -> int:
        """The container's own deadline: its limit plus a grace, so the runner's kill normally comes first."""
        limit = self.limit_s(cases)
        return int(limit + min(60.0, max(5.0, 0.1 * limit))) + 1


def parse_bytes(text: str, option: str = "--memory") -> int:
    """``32g``, ``512m``, ``1.5G``, ``1024`` -> bytes (docker's size syntax)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().rstrip("b")
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        value = 0.0
    if value < 1:
        raise ConfigError(f"{option} {text!r} is not a size such as 32g or 512m")
    return int(value)


def split_cpus(slots: int) -> list[str]:
    """This process's CPUs as ``slots`` disjoint cpusets (all of them for each when there are too few)."""
    cpus = (
        sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else list(range(os.cpu_count() or 1))
    )
    if slots <= 1 or len(cpus) < slots:
        return [",".join(map(str, cpus))] * max(slots, 1)
    per = len(cpus) // slots
    return [",".join(map(str, cpus[i * per : (i + 1) * per])) for i in range(slots)]


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


@dataclass(frozen=True)
class Engine:
    """What this engine and this process can enforce, found once per runner."""

    driver: str
    backing_fs: str
    quota: bool  # `--storage-opt size` caps a container's writable layer
    userns: bool  # root in a container is not root here (userns-remap or a rootless engine)
    mount_outputs: bool  # this process may mount a size-limited tmpfs as a container's output folder

    @classmethod
    def detect(cls, client: Any, image_id: str, size: int, work: Path) -> Engine:
        """Ask the engine (and try ``--storage-opt size`` on ``image_id``), and try a mount in ``work``."""
        from ctfm.extract.containers.folders import can_mount

        info = client.info()
        status = dict(info.get("DriverStatus") or [])
        security = " ".join(info.get("SecurityOptions") or [])
        return cls(
            driver=str(info.get("Driver", "")),
            backing_fs=str(status.get("Backing Filesystem", "")),
            quota=_quota_works(client, image_id, size),
            userns="name=userns" in security or "name=rootless" in security,
            mount_outputs=can_mount(work),
        )

    def notes(self, settings: RunSettings) -> list[str]:
        """One line per fallback this engine forces, with what would lift it."""
        notes = []
        if self.quota and self.driver == "btrfs":
            notes.append(
                "engine storage btrfs caps scratch with qgroups, which stop enforcing limits once "
                "inconsistent (after subvolume deletions): run `btrfs quota rescan -w` on its data root"
            )
        if not self.quota:
            where = f"{self.driver} on {self.backing_fs}" if self.backing_fs else self.driver
            notes.append(
                f"engine storage {where} cannot cap a container's own file system (--storage-opt size needs "
                f"overlay2 on xfs with pquota, btrfs or zfs): containers get a read-only image with "
                f"{settings.scratch} tmpfs scratch at /tmp and $HOME; see docs/container-contract.md"
            )
        if not self.mount_outputs:
            notes.append(
                "ctfm cannot mount here (not root, or root without the capability): each container's output "
                "folder is a plain folder the kernel does not cap (as root ctfm mounts a size-limited one)"
            )
        if not self.userns:
            notes.append(
                "engine has no user-namespace remapping: an image's root user is root here too, "
                "without capabilities or new privileges (dockerd --userns-remap=default changes that)"
            )
        return notes

    def storage_size(self, settings: RunSettings, image_size: int) -> int:
        """``--storage-opt size`` for ``scratch`` bytes of writes: btrfs and zfs count the image as well."""
        extra = image_size if self.driver in QUOTA_DRIVERS else 0
        return parse_bytes(settings.scratch, "--scratch") + extra


def _quota_works(client: Any, image_id: str, size: int) -> bool:
    """Whether the engine accepts ``--storage-opt size`` (a created, never started, container tells)."""
    import docker

    try:
        created = client.api.create_container(
            image_id,
            command=["true"],
            network_disabled=True,
            labels={LABEL: "probe", LABEL_PID: str(os.getpid()), LABEL_HOST: socket.gethostname()},
            host_config=client.api.create_host_config(storage_opt={"size": str(size)}, network_mode="none"),
        )
    except docker.errors.APIError:
        return False
    with contextlib.suppress(docker.errors.APIError):
        client.api.remove_container(created["Id"], force=True)
    return True


def scratch_config(client: Any, engine: Engine, image: TeamImage, settings: RunSettings) -> tuple[dict, str]:
    """The container options giving ``image`` its kernel-capped scratch, and a note when it is narrower than
    the reference's writable image."""
    if engine.quota:
        size = engine.storage_size(settings, image.size)
        return {"read_only": False, "storage_opt": {"size": str(size)}}, ""
    opts = f"rw,exec,nosuid,nodev,size={parse_bytes(settings.scratch, '--scratch')},mode=1777"
    tmpfs = {"/tmp": opts}
    note = ""
    home, populated = image_home(client, image)
    if populated:
        note = f"{image.team}: $HOME {home} holds files in the image; on this engine it stays read-only"
    elif home not in ("/", "/tmp"):
        tmpfs[home] = opts
    return {"read_only": True, "tmpfs": tmpfs}, note


def image_home(client: Any, image: TeamImage) -> tuple[str, bool]:
    """(``$HOME`` the image's user gets, whether the image has files there), read from a created container:
    the image's ``HOME`` variable, else its user's ``/etc/passwd`` entry (``/`` without one, as runc does)."""
    env = dict(e.split("=", 1) for e in image.env if "=" in e)
    with _created(client, image.image_id) as cid:
        home = env.get("HOME") or _passwd_home(_read_file(client, cid, "/etc/passwd"), image.user)
        return home, _has_entries(client, cid, home)


@contextlib.contextmanager
def _created(client: Any, image_id: str) -> Iterator[str]:
    import docker

    created = client.api.create_container(
        image_id,
        entrypoint=["/bin/true"],
        network_disabled=True,
        labels={LABEL: "inspect", LABEL_PID: str(os.getpid()), LABEL_HOST: socket.gethostname()},
        host_config=client.api.create_host_config(network_mode="none"),
    )
    try:
        yield created["Id"]
    finally:
        with contextlib.suppress(docker.errors.APIError):
            client.api.remove_container(created["Id"], force=True)


def _archive_members(client: Any, cid: str, path: str) -> Iterator[tuple[tarfile.TarInfo, Any]]:
    """Members of the engine's tar of ``path`` in a container, streamed (nothing beyond what is read)."""
    import docker

    try:
        stream, _ = client.api.get_archive(cid, path, chunk_size=1 << 16)
    except docker.errors.NotFound:
        return
    with tarfile.open(fileobj=_GeneratorReader(stream), mode="r|") as tar:
        for member in tar:
            yield member, tar


def _read_file(client: Any, cid: str, path: str) -> str:
    for member, tar in _archive_members(client, cid, path):
        if member.isfile() and member.size <= PASSWD_MAX_BYTES:
            return tar.extractfile(member).read().decode("utf-8", "replace")
        return ""
    return ""


def paths_present(client: Any, image_id: str, paths: list[str]) -> dict[str, bool]:
    """Which of ``paths`` exist in the image (parent symlinks such as ``/bin`` -> ``usr/bin`` resolved)."""
    import docker

    found = {}
    with _created(client, image_id) as cid:
        for path in paths:
            try:
                stream, _ = client.api.get_archive(cid, path, chunk_size=1 << 16)
            except docker.errors.NotFound:
                found[path] = False
                continue
            with contextlib.suppress(Exception):
                stream.close()
            found[path] = True
    return found


def _has_entries(client: Any, cid: str, path: str) -> bool:
    """Whether the folder holds more than shell start-up files (stops at the first other entry's header)."""
    members = _archive_members(client, cid, path)
    try:
        for member, _ in members:
            below = member.name.rstrip("/").split("/")[1:]  # the path below the folder itself
            if below and not (len(below) == 1 and below[0] in SHELL_DOTFILES):
                return True
        return False
    finally:
        members.close()


def _passwd_home(passwd: str, user: str) -> str:
    name = (user or "root").split(":", 1)[0]
    for line in passwd.splitlines():
        parts = line.split(":")
        if len(parts) >= 6 and name in (parts[0], parts[2]):
            return parts[5] or "/"
    return "/root" if name in ("root", "0") else "/"


class _GeneratorReader(io.RawIOBase):
    """A file-like view of the SDK's chunk generator, for :mod:`tarfile` in stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            self._buf = next(self._chunks, b"")
            if not self._buf:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def reference_command(image: TeamImage, task: str) -> list[str]:
    """What the reference runner asks the engine to run: the image's entrypoint, then
    ``/bin/bash -c "sh extract_feat_LP.sh"``."""
    contract = load_benchmark().section("container")
    return [*image.entrypoint, *contract["shell"], contract["entrypoint"][task]]


def container_config(
    image: TeamImage,
    settings: RunSettings,
    *,
    name: str,
    in_dir: Path,
    out_dir: Path,
    masks: bool,
    cases: int,
    deadline_at: float,
    scratch: dict[str, Any],
    gpu: str | None,
    cpuset: str,
) -> dict[str, Any]:
    """Keyword arguments of ``containers.create`` for one container over ``cases`` cases."""
    from docker.types import DeviceRequest, LogConfig

    contract = load_benchmark().section("container")
    mem = parse_bytes(settings.memory)
    shell = contract["shell"][0]
    config: dict[str, Any] = {
        "image": image.image_id,
        # the deadline wrapper execs exactly the reference's argv (the image's entrypoint included)
        "entrypoint": [shell, "-c", DEADLINE_SH, "ctfm-deadline", str(settings.deadline_s(cases))],
        "command": reference_command(image, settings.task),
        "name": name,
        "labels": {
            LABEL: "1",
            LABEL_PID: str(os.getpid()),
            LABEL_HOST: socket.gethostname(),
            LABEL_TEAM: image.team,
            LABEL_DEADLINE: str(int(deadline_at)),
        },
        "environment": {"MASKS_DIR": contract["masks_dir"]} if masks else {},
        "volumes": {
            str(in_dir): {"bind": contract["input_dir"], "mode": "ro"},
            str(out_dir): {"bind": contract["output_dir"], "mode": "rw"},
        },
        "network_mode": "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": settings.pids_limit,
        "mem_limit": mem,
        "memswap_limit": mem,
        "shm_size": settings.shm_size,
        "cpuset_cpus": cpuset,
        "init": True,  # PID 1 is the engine's init, so the deadline's kill reaches every team process
        "log_config": LogConfig(
            type="json-file", config={"max-size": settings.log_max_size, "max-file": "1"}
        ),
        "detach": True,
        **scratch,
    }
    if gpu is not None:
        config["device_requests"] = [DeviceRequest(device_ids=[gpu], capabilities=[["gpu"]])]
    return config


class EngineSetupError(ContainerError):
    """The engine cannot run any team as asked (no NVIDIA runtime for --gpus): the whole run stops."""


def api_error(exc: Exception, gpu: str | None) -> ContainerError:
    """An engine refusal as one line; a missing NVIDIA runtime names the fix."""
    text = str(exc).strip()
    if gpu is not None and (GPU_DRIVER_HINT in text or "nvidia" in text.lower()):
        return EngineSetupError(
            f"--gpus {gpu}: the Docker engine has no NVIDIA runtime ({text}); install "
            "nvidia-container-toolkit and restart dockerd, or run without --gpus"
        )
    return ContainerError(f"the Docker engine refused the container: {text}")
