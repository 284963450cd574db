"""Running the real ``ctfm`` CLI from tests (importable by name: tests/ is on sys.path via conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(
    *args: str,
    cwd: Path | None = None,
    check: bool = True,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the real ``ctfm`` CLI in a subprocess, as a user would (``env``: variables added to ours)."""
    proc = subprocess.run(
        [sys.executable, "-m", "ctfm.cli.main", *map(str, args)],
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"ctfm {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc
