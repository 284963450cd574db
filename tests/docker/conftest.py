"""Fixtures of the docker tests: offline-built images (cached by tag), tiny NIfTI cases, leftover checks.

The base image comes from ``scripts/build_images.sh --base-only`` (mmdebstrap + docker import, skipped when
the tag exists); test images are one small layer FROM it (``tests/docker/images``), built through the SDK.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from docker_support import BAD_CASE, ctfm_containers, write_cases

REPO = Path(__file__).resolve().parents[2]
IMAGES_CTX = Path(__file__).parent / "images"
MODES = ("good", "hang", "crash", "nan", "junk", "net", "slow")


def _build_script(*args: str) -> dict[str, str]:
    """Run scripts/build_images.sh; return the KEY=VALUE lines it prints last (image tags)."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "build_images.sh"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/build_images.sh {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return dict(re.findall(r"^([A-Z_]+)=(\S+)$", proc.stdout, flags=re.M))


@pytest.fixture(scope="session")
def docker_client():
    import docker

    return docker.from_env(timeout=120)


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    return _build_script("--base-only")["BASE_TAG"]


@pytest.fixture(scope="session")
def baseline(docker_client, tmp_path_factory) -> dict[str, object]:
    """The baseline image and its lp tarball, as scripts/build_images.sh writes them."""
    out = REPO / "build" / "images"
    tags = _build_script(str(out))
    return {"tag": tags["BASELINE_TAG"], "lp": out / "baseline_lp.tar.gz", "eao": out / "baseline_eao.tar.gz"}


@pytest.fixture(scope="session")
def test_image(docker_client, base_image):
    """``test_image(mode)`` -> tag of a test image with that misbehaviour (built once per session)."""
    built: dict[str, str] = {}

    def get(mode: str, **buildargs: str) -> str:
        key = mode + "".join(f"-{k}{v}" for k, v in sorted(buildargs.items()))
        if key not in built:
            tag = f"ctfm-test:{key.lower()}"
            args = {"BASE": base_image, "MODE": mode, "BAD_CASE": BAD_CASE, **buildargs}
            docker_client.images.build(
                path=str(IMAGES_CTX), tag=tag, buildargs=args, rm=True, network_mode="none"
            )
            built[key] = tag
        return built[key]

    return get


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
