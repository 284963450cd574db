"""Nothing a runner starts outlives it: containers, their host folders and the images it loaded.

Three layers, each enough alone for containers: a container's own deadline (see ``DEADLINE_SH``) ends it at
its limit plus a grace even when no ctfm process is left; a watchdog process removes a dead runner's
containers, volumes, folders (mounts included) and images at once; and every runner starts with
:func:`sweep`, which removes ctfm containers whose deadline passed or whose runner on this host is gone, and
the volumes, folders and loaded images of runners that are gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ctfm.extract.containers.engine import LABEL, LABEL_DEADLINE, LABEL_HOST, LABEL_PID, docker_client
from ctfm.extract.containers.folders import remove_tree

WORK_DIR = ".ctfm-work"
LOADED = "loaded-images"  # in a runner's work folder: ids of the images it loaded, one per line


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(client: Any, store_root: Path | None = None) -> list[str]:
    """Remove ctfm containers over their deadline (any host) or left by runners of this host that are gone,
    the volumes of such runners, then (with ``store_root``) the work folders and loaded images of runners
    that are gone. Returns the removed containers' names. What live runners hold is left alone."""
    removed = []
    now = time.time()
    for c in client.api.containers(all=True, filters={"label": LABEL}):
        labels = c.get("Labels") or {}
        try:
            overdue = now > float(labels.get(LABEL_DEADLINE, "inf"))
        except ValueError:
            overdue = False
        if not (_orphan(labels) or overdue):
            continue
        with contextlib.suppress(Exception):
            client.api.remove_container(c["Id"], force=True)
            removed.append(",".join(n.lstrip("/") for n in c.get("Names") or []) or c["Id"][:12])
    for v in client.api.volumes(filters={"label": LABEL}).get("Volumes") or []:
        if _orphan(v.get("Labels") or {}):
            with contextlib.suppress(Exception):
                client.api.remove_volume(v["Name"], force=True)
    if store_root is not None:
        sweep_work(client, Path(store_root))
    return removed


def remove_own(client: Any) -> None:
    """Remove the containers, then the volumes, labelled with this process (its id, on this host)."""
    mine = {"label": [LABEL, f"{LABEL_PID}={os.getpid()}", f"{LABEL_HOST}={socket.gethostname()}"]}
    for c in client.api.containers(all=True, filters=mine):
        with contextlib.suppress(Exception):
            client.api.remove_container(c["Id"], force=True)
    for v in client.api.volumes(filters=mine).get("Volumes") or []:
        with contextlib.suppress(Exception):
            client.api.remove_volume(v["Name"], force=True)


def _orphan(labels: dict[str, str]) -> bool:
    """Whether the labels name a runner of this host that is gone."""
    pid = labels.get(LABEL_PID, "")
    return labels.get(LABEL_HOST) == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))


def sweep_work(client: Any, root: Path) -> None:
    """Remove work folders (``<pid>-<uuid>``) of runners that are gone, and the untagged images they
    loaded (a tagged one was tagged by someone since, so it is theirs)."""
    base = Path(root) / WORK_DIR
    if not base.is_dir():
        return
    for d in base.iterdir():
        pid = d.name.split("-", 1)[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        for image_id in _loaded(d):
            with contextlib.suppress(Exception):
                if not client.images.get(image_id).tags:
                    client.images.remove(image_id)
        with contextlib.suppress(OSError):
            remove_tree(d)


def note_loaded(work: Path, image_id: str) -> None:
    """Record an image this runner loaded, so a sweep can remove it if the runner dies before it does."""
    with (Path(work) / LOADED).open("a") as fh:
        fh.write(image_id + "\n")


def _loaded(work: Path) -> list[str]:
    with contextlib.suppress(OSError):
        return [line.strip() for line in (work / LOADED).read_text().splitlines() if line.strip()]
    return []


def watch_runner(pid: int, store_root: str, poll_s: float = 1.0) -> None:
    """The watchdog, in a process of its own: once runner ``pid`` is gone without cleaning up (SIGKILL, the
    OOM killer), remove its containers, volumes, folders and images. The engine keeps a container running
    after its client dies; this removes it before its own deadline does."""
    while pid_alive(pid):
        time.sleep(poll_s)
    sweep(docker_client(), Path(store_root))


def start_watchdog(store_root: Path) -> subprocess.Popen:
    code = "import sys; from ctfm.extract.containers.cleanup import watch_runner; watch_runner(int(sys.argv[1]), sys.argv[2])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen(
        [sys.executable, "-c", code, str(os.getpid()), str(store_root)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # a Ctrl-C of the runner's terminal must not stop it first
    )
