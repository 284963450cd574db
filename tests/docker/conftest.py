"""Fixtures of the docker tests: offline-built images (cached by tag), tiny NIfTI cases, leftover checks, and
what the engine enforces (its storage decides how scratch is capped; see ctfm.extract.containers.engine).

The base image comes from ``make images`` (``build_images.sh --base-only``) (mmdebstrap + docker import, skipped when
the tag exists); test images are one small layer FROM it (``tests/docker/images``), built through the SDK.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
from pathlib import Path

import pytest
from docker_support import BAD_CASE, ctfm_containers, write_cases

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "src" / "ctfm" / "extract" / "baseline_image" / "build_images.sh"
IMAGES_CTX = Path(__file__).parent / "images"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _build_script(*args: str) -> dict[str, str]:
    """Run the package's build_images.sh; return the KEY=VALUE lines it prints last (image tags)."""
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        pytest.fail(f"build_images.sh {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return dict(re.findall(r"^([A-Z_]+)=(\S+)$", proc.stdout, flags=re.M))


@pytest.fixture(scope="session")
def docker_client():
    import docker

    return docker.from_env(timeout=120)


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    return _build_script("--base-only")["BASE_TAG"]


@pytest.fixture(scope="session")
def engine(docker_client, base_image, tmp_path_factory):
    """What this engine enforces: a capped writable image (storage quota) or the read-only fallback."""
    from ctfm.extract.containers.engine import Engine

    image = docker_client.images.get(base_image)
    size = int(image.attrs["Size"]) + (1 << 30)
    return Engine.detect(docker_client, image.id, size, tmp_path_factory.mktemp("engine"))


@pytest.fixture
def root_only():
    """Size-capped output folders are mounted by a root runner; CI runs as root, so there it must be."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI=true but the tests do not run as root")
        pytest.skip("mounting size-capped output folders needs root")


@pytest.fixture(scope="session")
def baseline(docker_client, tmp_path_factory) -> dict[str, object]:
    """The baseline image and its tarballs, as build_images.sh writes them."""
    out = REPO / "build" / "images"
    tags = _build_script(str(out))
    return {"tag": tags["BASELINE_TAG"], "lp": out / "baseline_lp.tar.gz", "eao": out / "baseline_eao.tar.gz"}


@pytest.fixture(scope="session")
def image_builder(docker_client):
    """``build(tag, dockerfile_text)`` -> tag: a one-off image from a Dockerfile with no build context."""

    built: list[str] = []

    def build(tag: str, dockerfile: str) -> str:
        docker_client.images.build(
            fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, network_mode="none"
        )
        built.append(tag)
        return tag

    yield build
    _remove_images(docker_client, built)


@pytest.fixture(scope="session")
def test_image(docker_client, base_image, image_builder):
    """``test_image(mode, **buildargs)`` -> tag of a test image with that misbehaviour (built once per
    session); BAD_CASE defaults to the second case."""
    built: dict[str, str] = {}

    def get(mode: str, **buildargs: str) -> str:
        key = mode + "".join(f"-{k}{v}" for k, v in sorted(buildargs.items()))
        if key not in built:
            tag = f"ctfm-test:{re.sub(r'[^a-z0-9_.-]+', '-', key.lower())}"
            args = {"BASE": base_image, "MODE": mode, "BAD_CASE": BAD_CASE, **buildargs}
            docker_client.images.build(
                path=str(IMAGES_CTX), tag=tag, buildargs=args, rm=True, network_mode="none"
            )
            built[key] = tag
        return built[key]

    yield get
    _remove_images(docker_client, list(built.values()))


def _remove_images(client, tags: list[str]) -> None:
    """Test images go at the end of the session (one cheap layer each: rebuilt in a second)."""
    for tag in reversed(tags):
        with contextlib.suppress(Exception):
            client.images.remove(tag, force=True)


@pytest.fixture
def cases4(tmp_path) -> Path:
    return write_cases(tmp_path / "images", 4)


@pytest.fixture
def no_leftovers(docker_client):
    """After the test, no container of this process may remain."""
    yield
    left = ctfm_containers(docker_client, os.getpid())
    for cid in left:
        docker_client.api.remove_container(cid, force=True)
    assert not left, f"leftover containers: {left}"
