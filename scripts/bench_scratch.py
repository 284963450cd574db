"""Scratch on engines that cannot cap a container's writable layer: what a writable working directory costs.

An image whose working directory holds W MiB of weights runs a container that writes one small cache file
there and exits, N times, three ways, in the same run (root only; run it where ``--storage-opt size`` does not
work, e.g. overlay2 on ext4):

- ``read-only + tmpfs``: the image read-only, a capped tmpfs at /tmp (ctfm's fallback without root): the
  cache write fails; the baseline for the container's own cost;
- ``overlay`` (ctfm as root): the working directory is an overlay of a one-time host copy of the image's
  files there, its writes on a capped tmpfs mounted per container;
- ``copy per container``: a volume bound to a folder on a capped tmpfs, which the engine fills with the image's
  files at each container's creation (what a container gets with a fresh copy and no overlay).

It prints the median seconds per container (mounts, creation, start, exit and removal), the ratio to the
baseline, the scratch memory a container holds (tmpfs in use when it exits) and the one-time copy.

    sudo .venv/bin/python scripts/bench_scratch.py [--runs 5] [--weights-mib 0 1024]

Needs a running Docker engine and the base image (``make images`` (``build_images.sh --base-only``)).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchlib import base_tag

COMMAND = ["/bin/bash", "-c", "echo x > /app/cache.bin || true"]
SCRATCH = 1 << 30


def build(client, base: str, mib: int) -> str:
    tag = f"ctfm-bench-scratch:{mib}"
    weights = f"RUN head -c {mib << 20} /dev/urandom > /app/weights.bin\n" if mib else ""
    dockerfile = f"FROM {base}\nRUN mkdir /app\n{weights}WORKDIR /app\n"
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, network_mode="none")
    return tag


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def run_container(client, image: str, measure: Callable[[], int], **options) -> int:
    """Create, start, wait for and remove one container; return the scratch bytes in use when it exited."""
    container = client.containers.create(image, COMMAND, network_mode="none", **options)
    try:
        container.start()
        container.wait()
        return measure()
    finally:
        container.remove(force=True)


def readonly_tmpfs(client, image: str, work: Path) -> int:
    return run_container(
        client, image, lambda: 0, read_only=True, tmpfs={"/tmp": f"rw,exec,size={SCRATCH},mode=1777"}
    )


def overlay(client, image: str, work: Path, copy: Path) -> int:
    from docker.types import Mount

    from ctfm.extract.containers.folders import RunFolders

    folders = RunFolders(work / "run")
    folders.base.mkdir()
    try:
        folders.overlay([("/app", copy)], SCRATCH)
        ((merged, target),) = folders.binds
        mounts = [Mount(target, str(merged), type="bind")]
        return run_container(
            client, image, lambda: used_bytes(folders.scratch), read_only=True, mounts=mounts
        )
    finally:
        folders.remove()


def copy_per_container(client, image: str, work: Path) -> int:
    from docker.types import Mount

    from ctfm.extract.containers.folders import mount_tmpfs, remove_tree

    scratch = work / "run"
    scratch.mkdir()
    volume = None
    try:
        mount_tmpfs(scratch, 2 * SCRATCH + (1 << 31), 1 << 20, mode=0o700)  # the folder's size + scratch
        (scratch / "app").mkdir()
        options = {"type": "none", "o": "bind", "device": str(scratch / "app")}
        volume = client.volumes.create("ctfm-bench-copy", driver="local", driver_opts=options)
        mounts = [Mount("/app", volume.name)]
        return run_container(client, image, lambda: used_bytes(scratch), read_only=True, mounts=mounts)
    finally:
        if volume is not None:
            volume.remove(force=True)
        remove_tree(scratch)


def timed(runs: int, fn: Callable[..., int], *args: object) -> tuple[float, int]:
    seconds, held = [], 0
    fn(*args)  # warm-up: the engine's first container of an image is slower
    for _ in range(runs):
        t0 = time.perf_counter()
        held = fn(*args)
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), held


def bench_image(client, image: str, runs: int) -> tuple[dict[str, tuple[float, int]], float]:
    """The three ways over one image, and the overlay's one-time copy in seconds."""
    from ctfm.extract.containers.folders import remove_tree
    from ctfm.extract.containers.scratch import copy_folders
    from ctfm.extract.containers.tarballs import TeamImage

    with tempfile.TemporaryDirectory(prefix="ctfm-bench-") as tmp_str:
        tmp = Path(tmp_str)
        team = TeamImage("bench", "bench", client.images.get(image).id, [], 0, image)
        t0 = time.perf_counter()
        (copy,) = copy_folders(client, team, ["/app"], tmp / "copy")
        once = time.perf_counter() - t0
        results = {
            "read-only + tmpfs": timed(runs, readonly_tmpfs, client, image, tmp),
            "overlay": timed(runs, overlay, client, image, tmp, copy),
            "copy per container": timed(runs, copy_per_container, client, image, tmp),
        }
        remove_tree(tmp / "copy")  # files of the image's users: removed as root, whatever their modes
    return results, once


def main() -> None:
    import docker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--weights-mib", type=int, nargs="+", default=[0, 1024])
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_scratch: mounting scratch needs root")
    client = docker.from_env()
    base = base_tag()
    print(f"container writing a cache in its working directory; median of {args.runs} runs, same run")
    print(f"{'weights':>8s} {'mode':22s} {'s/container':>12s} {'vs read-only':>13s} {'scratch held':>13s}")
    for mib in args.weights_mib:
        image = build(client, base, mib)
        try:
            results, once = bench_image(client, image, args.runs)
        finally:
            client.images.remove(image, force=True)
        ref = results["read-only + tmpfs"][0]
        for mode, (seconds, held) in results.items():
            print(
                f"{mib:6d} M {mode:22s} {seconds:12.3f} {seconds / ref:12.2f}x {held / (1 << 20):10.1f} MiB"
            )
        print(f"{mib:6d} M overlay's one-time copy of /app: {once:.2f} s")


if __name__ == "__main__":
    main()
