"""One extraction pass over several tasks and views: each image read once, the same embeddings as one view at
a time, and a bad case failing only the jobs it concerns."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ctfm.core.errors import ConfigError
from ctfm.core.hashing import sha256_file
from ctfm.core.nifti import read_array, write
from ctfm.extract import local, preprocess
from ctfm.extract.local import ExtractConfig, run_local, run_local_many
from ctfm.store import Store
from extract_fixtures import make_case

ROI = ("fatty_liver", "splenomegaly")
CASES = ("case_00", "case_01", "case_02")


def _bench(root: Path) -> Path:
    for i, case in enumerate(CASES):
        for disease in ROI:
            make_case(root, case, organ_hu=40 + 5 * i, finding=(28, 12, 10), mask_dir=root / "fg" / disease)
    return root


def _configs(root: Path, store: Path, extractor: str = "hu-stats") -> list[ExtractConfig]:
    common = {"extractor": extractor, "images": root / "images", "store": store, "workers": 0}
    return [
        ExtractConfig(
            task=task,
            masks=None if view == "full" else root / "fg",
            disease=None if view == "full" else view,
            **common,
        )
        for task in ("lp", "eao")
        for view in ("full", *ROI)
    ]


def test_one_pass_reads_each_image_once_and_matches_view_by_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _bench(tmp_path)
    reads: list[Path] = []
    masks: list[Path] = []
    real_image, real_mask = preprocess.load_image, preprocess.add_mask
    monkeypatch.setattr(preprocess, "load_image", lambda path: reads.append(path) or real_image(path))
    monkeypatch.setattr(preprocess, "add_mask", lambda img, path: masks.append(path) or real_mask(img, path))
    summaries = run_local_many(_configs(root, tmp_path / "one_pass"))
    assert [len(s.ok) for s in summaries] == [len(CASES)] * 6 and not any(s.failed for s in summaries)
    assert sorted(p.name for p in reads) == [f"{c}.nii.gz" for c in CASES]  # once, for six jobs
    assert len(masks) == len(CASES) * len(ROI)  # once per view, for both tasks
    for cfg in _configs(root, tmp_path / "view_by_view"):
        run_local(cfg)
    for task in ("lp", "eao"):
        for view in ("full", *ROI):
            a = Store(tmp_path / "one_pass").view("hu-stats", task, view)
            b = Store(tmp_path / "view_by_view").view("hu-stats", task, view)
            for case in CASES:
                np.testing.assert_array_equal(a.read_case(case), b.read_case(case))
                assert a.record(case).crop_box_world == b.record(case).crop_box_world
            assert a.manifest_checksum() == b.manifest_checksum()
    assert len(reads) == len(CASES) * 7  # view by view: once per task and view
    assert len(masks) == len(CASES) * len(ROI) * 3
    again = run_local_many(_configs(root, tmp_path / "one_pass"))
    assert [len(s.skipped) for s in again] == [len(CASES)] * 6 and len(reads) == len(CASES) * 7
    for image in (root / "images").iterdir():  # new stamps, same content: each image hashed once, not per job
        os.utime(image, (1e9, 1e9))
    hashed: list[Path] = []
    monkeypatch.setattr(local, "sha256_file", lambda path: hashed.append(path) or sha256_file(path))
    touched = run_local_many(_configs(root, tmp_path / "one_pass"))
    assert [len(s.skipped) for s in touched] == [len(CASES)] * 6
    assert sorted(p.name for p in hashed if p.parent.name == "images") == [f"{c}.nii.gz" for c in CASES]
    changed = root / "images" / f"{CASES[0]}.nii.gz"  # other content: planning hashes it, reading reuses that
    scan, img = read_array(changed)
    write(changed, scan + 1, img.affine)
    hashed.clear()
    redone = run_local_many(_configs(root, tmp_path / "one_pass"))
    assert [s.ok for s in redone] == [[CASES[0]]] * 6
    assert [p.name for p in hashed if p.parent.name == "images"] == [changed.name]


def test_a_bad_case_fails_only_the_jobs_it_concerns(tmp_path: Path) -> None:
    root = _bench(tmp_path)
    (root / "images" / "case_01.nii.gz").write_bytes(b"not a scan")
    (root / "fg" / "splenomegaly" / "case_02.nii.gz").unlink()
    summaries = run_local_many(_configs(root, tmp_path / "store")[:3])  # lp: full + 2 ROI
    failed = {s.view: sorted(case for case, _ in s.failed) for s in summaries}
    assert failed == {
        "hu-stats/lp/full": ["case_01"],
        "hu-stats/lp/fatty_liver": ["case_01"],
        "hu-stats/lp/splenomegaly": ["case_01", "case_02"],
    }
    errors = dict(summaries[2].failed)
    assert "case_01.nii.gz: cannot read" in errors["case_01"]
    assert "no mask" in errors["case_02"]
    assert sorted(summaries[1].ok) == ["case_00", "case_02"]


def test_jobs_of_one_pass_must_share_the_extractor_and_images(tmp_path: Path) -> None:
    root = _bench(tmp_path)
    lp, eao = _configs(root, tmp_path / "store")[0], _configs(root, tmp_path / "store", "cnn3d")[3]
    with pytest.raises(ConfigError, match="must share extractor"):
        run_local_many([lp, eao])
    with pytest.raises(ConfigError, match="different views"):
        run_local_many([lp, lp])
