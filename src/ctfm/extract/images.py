"""ctfm's own baseline container image, built offline by ``scripts/build_images.sh`` (cached by tag)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from ctfm.core.errors import ContainerError

BUILD_SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "build_images.sh"


def build_baseline_image(log: Callable[[str], None] | None = None, timeout: float = 1200) -> str:
    """Build (or reuse) the baseline image in the local engine and return its tag.

    The build needs a ctfm checkout (the script and Dockerfile live beside the package), a running engine and,
    the first time only, mmdebstrap with a reachable Debian mirror; each missing piece is one clear error.
    """
    if not BUILD_SCRIPT.is_file():
        raise ContainerError(f"{BUILD_SCRIPT} not found: the baseline image is built from a ctfm checkout")
    if shutil.which("bash") is None:
        raise ContainerError("bash is needed to build the baseline image")
    (log or (lambda _m: None))("building the baseline container image (cached after the first time)")
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--no-save"],
            cwd=BUILD_SCRIPT.parents[1],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise ContainerError(f"building the baseline image took over {timeout:.0f} s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise ContainerError(f"building the baseline image failed: {last[0]}")
    tags = dict(re.findall(r"^([A-Z_]+)=(\S+)$", proc.stdout, flags=re.M))
    if "BASELINE_TAG" not in tags:
        raise ContainerError("scripts/build_images.sh did not report the baseline tag")
    return tags["BASELINE_TAG"]
