"""Shared test set-up: markers, the Docker rule, the CLI runner and offline wandb."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cli_support import run_cli

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


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def wandb_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real wandb with no API key: the CLI's runs are written offline (read them with ``wandb_records``)."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def synth_bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-case demo synthetic benchmark (seed 0), generated once per test session through the library.

    Shared by every test that asks for it: never modify it in place (copy it first with shutil.copytree).
    """
    from ctfm.data.synth import generate_benchmark

    root = tmp_path_factory.mktemp("synth_bench") / "bench"
    return generate_benchmark(root, cases=40, seed=0, shape="demo", workers=min(2, os.cpu_count() or 1))
