"""Helpers shared by the docker tests (imported by name: tests/docker is on sys.path via its conftest)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

BAD_CASE = "case_0001"


def write_cases(folder: Path, n: int, seed: int = 0, mask_dir: Path | None = None) -> Path:
    """``n`` tiny int16 CT-like volumes ``case_XXXX.nii.gz`` (and binary masks when ``mask_dir`` is given)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    for i in range(n):
        vol = rng.integers(-1000, 1000, (12, 12, 8)).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, affine), str(folder / f"case_{i:04d}.nii.gz"))
        if mask_dir is not None:
            mask_dir.mkdir(parents=True, exist_ok=True)
            m = np.zeros((12, 12, 8), np.uint8)
            m[2 + i % 3 : 9, 3:10, 2:6] = 1
            nib.save(nib.Nifti1Image(m, affine), str(mask_dir / f"case_{i:04d}.nii.gz"))
    return folder


def ctfm_containers(client, pid: int | None = None) -> list[str]:
    """Ids of containers labelled by a ctfm runner (optionally: by the runner with this pid).

    The low-level listing carries the labels, so a container removed meanwhile cannot make this fail.
    """
    found = client.api.containers(all=True, filters={"label": "ctfm.runner"})
    return [c["Id"] for c in found if pid is None or c["Labels"].get("ctfm.pid") == str(pid)]


def run_tag(store: Path, tag: str, images: Path, **settings) -> object:
    """One team, given by tag, through the library's whole-run entry point."""
    from ctfm.extract.containers import ContainerRunOptions, RunSettings, run_containers

    settings.setdefault("memory", "1g")
    (report,) = run_containers(ContainerRunOptions(store, images, RunSettings(**settings), tags=(tag,)))
    return report


def statuses(report) -> dict[str, str]:
    return {c: o.status for c, o in sorted(report.outcomes.items())}


def save_tarball(client, image_id: str, tarball: Path, tags: list[str], gz: bool = True) -> Path:
    """``docker save`` an image by id into a team tarball whose manifest names it ``tags`` (set in the file,
    so no tag moves in the engine while the test prepares it)."""
    import io
    import json
    import tarfile

    from ctfm.extract.containers.imagefs import ChunkReader

    tarball.parent.mkdir(parents=True, exist_ok=True)
    stream = ChunkReader(client.api.get_image(image_id))
    with (
        tarfile.open(fileobj=stream, mode="r|") as src,
        tarfile.open(tarball, "w:gz" if gz else "w", **({"compresslevel": 1} if gz else {})) as dst,
    ):
        for member in src:
            if member.name == "manifest.json":
                manifest = json.loads(src.extractfile(member).read())
                manifest[0]["RepoTags"] = tags
                data = json.dumps(manifest).encode()
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))
            else:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return tarball


def nonce_image(client, base_tag: str) -> str:
    """A new image id (one label more) sharing ``base_tag``'s layers: removing it leaves the others alone."""
    import time

    container = client.containers.create(base_tag, labels={"ctfm.test": "nonce"})
    try:
        image = container.commit(changes=[f"LABEL ctfm.test.nonce={time.time_ns()}"])
    finally:
        container.remove(force=True)
    return image.id
