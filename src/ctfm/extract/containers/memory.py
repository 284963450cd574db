"""Peak memory of a running container, for ``check-container``.

Where this host sees the container's cgroup (a local engine), the kernel's own peak counter is read every
50 ms, so the figure misses at most the last 50 ms of a run. Otherwise the engine's stats are sampled: they
answer about once a second, so they miss short runs (cgroup v1 still reports the peak between samples).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any


def sample_peak(container: Any, done: threading.Event, report: Any) -> None:
    """Until ``done``, keep ``report.peak_memory`` at the highest peak seen."""
    peak_file = cgroup_peak_file(container)
    while not done.is_set():
        with contextlib.suppress(Exception):
            peak = int(peak_file.read_text()) if peak_file is not None else _engine_peak(container)
            if peak:
                report.peak_memory = max(report.peak_memory or 0, peak)
        done.wait(0.05 if peak_file is not None else 0.2)


def _engine_peak(container: Any) -> int:
    mem = container.stats(stream=False, one_shot=True).get("memory_stats", {})
    return max(int(mem.get("max_usage", 0) or 0), int(mem.get("usage", 0) or 0))


def cgroup_peak_file(
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
