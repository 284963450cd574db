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
