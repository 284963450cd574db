"""Shared test set-up: markers, the Docker rule, and the CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def docker_available() -> tuple[bool, str]:
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
        return True, ""
    except Exception as exc:  # any failure means: no usable daemon
        return False, f"{type(exc).__name__}: {exc}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Docker tests skip without a daemon on a laptop, but under CI=true a missing daemon fails them."""
    docker_items = [item for item in items if "docker" in item.keywords]
    if not docker_items:
        return
    ok, why = docker_available()
    if ok:
        return
    for item in docker_items:
        if IN_CI:
            item.add_marker(pytest.mark.usefixtures("_docker_required"))
        else:
            item.add_marker(pytest.mark.skip(reason=f"no Docker daemon ({why})"))


@pytest.fixture
def _docker_required() -> None:
    ok, why = docker_available()
    if not ok:
        pytest.fail(f"CI=true but no Docker daemon is reachable: {why}")


def run_cli(
    *args: str, cwd: Path | None = None, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run the real ``ctfm`` CLI in a subprocess, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "ctfm.cli.main", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"ctfm {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def cli():
    return run_cli
