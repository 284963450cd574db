"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB.

    ``VmHWM``, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over from the parent through fork and exec, so a
    benchmark's fresh child process would report its parent's peak whenever that was higher.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere (kB on Linux)


def base_tag() -> str:
    """The offline base image's tag, built by ``make images`` (``build_images.sh --base-only``) when missing."""
    from ctfm.extract.images import BUILD_SCRIPT

    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--base-only"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("BASE_TAG="))
