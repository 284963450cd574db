"""ctfm's own baseline container image, built offline by ``baseline_image/build_images.sh`` (cached by tag).

The recipe (script, Dockerfile, entry scripts) ships inside the package beside this module, so the image
builds the same from a checkout and from an installed wheel.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from ctfm.core.errors import ContainerError

BUILD_SCRIPT = Path(__file__).resolve().with_name("baseline_image") / "build_images.sh"


def build_baseline_image(log: Callable[[str], None] | None = None, timeout: float = 1200) -> str:
    """Build (or reuse) the baseline image in the local engine and return its tag.

    The build needs a running engine and, the first time only, mmdebstrap with a reachable Debian mirror;
    each missing piece is one clear error.
    """
    if not BUILD_SCRIPT.is_file():
        raise ContainerError(f"{BUILD_SCRIPT} not found: this ctfm installation lacks its image recipe")
    if shutil.which("bash") is None:
        raise ContainerError("bash is needed to build the baseline image")
    (log or (lambda _m: None))("building the baseline container image (cached after the first time)")
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--no-save"],
            cwd=BUILD_SCRIPT.parent,
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
        raise ContainerError(f"{BUILD_SCRIPT} did not report the baseline tag")
    return tags["BASELINE_TAG"]
