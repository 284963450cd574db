"""The Docker engine as ctfm uses it: the client, what the engine can enforce, and a container's settings.

A team container gets what the reference runner gives it (``configs/benchmark.yaml`` section ``container``):
its image's entrypoint with the command ``/bin/bash -c "sh extract_feat_LP.sh"``, the image's working
directory and user, ``/workspace/inputs`` and ``/workspace/outputs`` mounted, ``MASKS_DIR`` for ROI diseases
and nothing else in its environment, a writable file system. ctfm adds confinement that a valid container
does not notice: no network, no capabilities, no new privileges, read-only inputs, pid, memory (swap equal)
and CPU limits, a wall-clock limit enforced inside the container too, and a kernel-enforced size for what it
writes. How that size is enforced depends on what :class:`Engine` finds (see
:mod:`~ctfm.extract.containers.scratch`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctfm.core.benchmark import configured, load_benchmark
from ctfm.core.errors import ConfigError, ContainerError
from ctfm.store.untrusted import MAX_FILE_BYTES, READ_TIMEOUT_S

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


def labels(kind: str, **extra: str) -> dict[str, str]:
    """Labels of everything a runner creates in the engine (``kind``: ``1`` for a team container), so a
    sweep can tell whose it is and remove it once its runner is gone."""
    return {LABEL: kind, LABEL_PID: str(os.getpid()), LABEL_HOST: socket.gethostname(), **extra}


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
    max_output_bytes: int = MAX_FILE_BYTES  # one case's output file; the output folder holds this per case
    max_output_files: int = 100_000  # inodes of the output folder
    read_timeout_s: float = READ_TIMEOUT_S  # reading one output file, whatever its HDF5 layout
    keep_images: bool = False
    force: bool = False
    poll_s: float = 0.05
    measure_memory: bool = False
    log_max_size: str = "20m"
    shard: str | None = None  # a cluster task's own part of the store view (ctfm.store.shards)

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
    overlay: bool = False  # ... and overlays of image folders with their writes on such a tmpfs

    @classmethod
    def detect(cls, client: Any, image_id: str, size: int, work: Path) -> Engine:
        """Ask the engine (and try ``--storage-opt size`` on ``image_id``), and try mounts in ``work``."""
        from ctfm.extract.containers.folders import probe_mounts

        info = client.info()
        status = dict(info.get("DriverStatus") or [])
        security = " ".join(info.get("SecurityOptions") or [])
        tmpfs, overlay = probe_mounts(work)
        return cls(
            driver=str(info.get("Driver", "")),
            backing_fs=str(status.get("Backing Filesystem", "")),
            quota=_quota_works(client, image_id, size),
            userns="name=userns" in security or "name=rootless" in security,
            mount_outputs=tmpfs,
            overlay=overlay,
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
            cannot = (
                f"engine storage {where} cannot cap a container's writable layer (--storage-opt size needs "
                "overlay2 on xfs with pquota, btrfs or zfs): containers get a read-only image"
            )
            if self.overlay:
                notes.append(
                    f"{cannot} whose working directory, $HOME, /tmp and /var/tmp are writable (the image's "
                    f"files there, fresh for each container), their writes capped at {settings.scratch} in "
                    "memory; see docs/container-contract.md"
                )
            else:
                notes.append(
                    f"{cannot} with {settings.scratch} tmpfs scratch at /tmp and $HOME (as root, ctfm also "
                    "makes its working directory writable); see docs/container-contract.md"
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
            labels=labels("probe"),
            host_config=client.api.create_host_config(storage_opt={"size": str(size)}, network_mode="none"),
        )
    except docker.errors.APIError:
        return False
    with contextlib.suppress(docker.errors.APIError):
        client.api.remove_container(created["Id"], force=True)
    return True


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
    binds: list[tuple[Path, str]] = (),
) -> dict[str, Any]:
    """Keyword arguments of ``containers.create`` for one container over ``cases`` cases; ``scratch`` holds
    the image's scratch options and ``binds`` its scratch folders (host folder, container folder)."""
    from docker.types import DeviceRequest, LogConfig, Mount

    contract = load_benchmark().section("container")
    mem = parse_bytes(settings.memory)
    shell = contract["shell"][0]
    config: dict[str, Any] = {
        "image": image.image_id,
        # the deadline wrapper execs exactly the reference's argv (the image's entrypoint included)
        "entrypoint": [shell, "-c", DEADLINE_SH, "ctfm-deadline", str(settings.deadline_s(cases))],
        "command": reference_command(image, settings.task),
        "name": name,
        "labels": labels("1", **{LABEL_TEAM: image.team, LABEL_DEADLINE: str(int(deadline_at))}),
        "environment": {"MASKS_DIR": contract["masks_dir"]} if masks else {},
        # structured mounts, not "src:dst:mode" strings, so a host path may hold a colon
        "mounts": [
            Mount(contract["input_dir"], str(in_dir), type="bind", read_only=True),
            Mount(contract["output_dir"], str(out_dir), type="bind"),
            *(Mount(target, str(source), type="bind") for source, target in binds),
        ],
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
