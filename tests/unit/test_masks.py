"""ctfm.masks: mask arithmetic, margins, v1/v2 detection, both layouts, QC, failures and resume."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ctfm.core.benchmark import load_benchmark
from ctfm.core.class_map_version import class_map_votes, detect_class_map_version
from ctfm.core.errors import ConfigError, DataError
from ctfm.masks import (
    EMPTY,
    FAILED,
    OK,
    ORGAN_MISSING,
    build_masks,
    cases_from_labels,
    disease_masks,
    find_label_maps,
    totalsegmentator_missing,
)
from masks_fixtures import crop_z, expected_masks, phantom, save, save_folder, to_v1

V2 = load_benchmark().class_map("v2")


@pytest.fixture(scope="module")
def body() -> tuple[np.ndarray, np.ndarray]:
    return phantom()


def _read(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


# ------------------------------------------------------------------------------------------- arithmetic
def test_disease_masks_match_per_organ_reference(body):
    label, affine = body
    got = disease_masks(label, affine, None, None)
    want = expected_masks(label)
    assert set(got) == set(load_benchmark().roi_diseases)
    for disease, mask in want.items():
        assert got[disease].dtype == np.uint8
        assert np.array_equal(got[disease], mask), disease
    assert got["renal_cyst"].sum() == got["hydronephrosis"].sum() > 0


def test_disease_masks_any_label_dtype_and_unrelated_values(body):
    label, affine = body
    want = expected_masks(label, ["cholecystitis"])["cholecystitis"]
    for dtype in (np.uint8, np.int32, np.float32, np.uint16):
        got = disease_masks(label.astype(dtype), affine, ["cholecystitis"], "v2")["cholecystitis"]
        assert np.array_equal(got, want), dtype
    noisy = label.copy()
    noisy[0, 0, 0] = -5  # negative and out-of-map values are background, never a wrapped-around organ
    noisy[1, 0, 0] = 30000
    assert np.array_equal(disease_masks(noisy, affine, ["fatty_liver"], None)["fatty_liver"], label == 5)


def test_disease_masks_rejects_non_roi_disease(body):
    with pytest.raises(ConfigError, match="not an ROI disease"):
        disease_masks(body[0], body[1], ["ascites"], None)


def test_margin_is_physical_and_anisotropic():
    label = np.zeros((41, 41, 21), np.int16)
    label[20, 20, 10] = V2.ids["spleen"]
    affine = np.diag([1.0, 2.0, 5.0, 1.0])
    mask = disease_masks(label, affine, ["splenomegaly"], None, margin_mm=4.0)["splenomegaly"]
    # 4 mm reaches 4 voxels along x (1 mm), 2 along y (2 mm), none along z (5 mm)
    assert mask[16:25, 20, 10].all() and not mask[15, 20, 10] and not mask[25, 20, 10]
    assert mask[20, 18:23, 10].all() and not mask[20, 17, 10] and not mask[20, 23, 10]
    assert not mask[20, 20, 9] and not mask[20, 20, 11]
    # exactly the voxels whose centre is within 4 mm: an ellipsoid in voxel units
    i, j, k = np.meshgrid(*(np.arange(n) for n in label.shape), indexing="ij")
    dist = np.sqrt(((i - 20) * 1.0) ** 2 + ((j - 20) * 2.0) ** 2 + ((k - 10) * 5.0) ** 2)
    assert np.array_equal(mask.astype(bool), dist <= 4.0)


def test_margin_unions_then_dilates_and_stays_in_grid(body):
    label, affine = body
    plain = disease_masks(label, affine, ["hydronephrosis"], None)["hydronephrosis"]
    grown = disease_masks(label, affine, ["hydronephrosis"], None, margin_mm=10.0)["hydronephrosis"]
    assert grown.shape == label.shape and grown.dtype == np.uint8
    assert (grown >= plain).all() and grown.sum() > plain.sum()
    from scipy import ndimage

    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    want = ndimage.distance_transform_edt(plain == 0, sampling=spacing) <= 10.0 + 1e-6
    np.testing.assert_array_equal(grown.astype(bool), want)  # exactly the union's dilation, organ by organ
    with pytest.raises(ConfigError):
        disease_masks(label, affine, ["hydronephrosis"], None, margin_mm=-1)


# -------------------------------------------------------------------------------------------- detection
def test_detects_v2_and_v1_full_and_abdomen_crops(body):
    label, affine = body
    v1 = to_v1(label)
    assert detect_class_map_version(label, affine) == "v2"
    assert detect_class_map_version(v1, affine) == "v1"
    abdomen, abd_affine = crop_z(label, affine, -170, 95)
    assert abdomen.max() <= 104  # the crop removes the ribs: the decision rests on anatomy votes
    assert detect_class_map_version(abdomen, abd_affine) == "v2"
    assert detect_class_map_version(to_v1(abdomen), abd_affine) == "v1"
    votes = dict(class_map_votes(to_v1(abdomen), abd_affine))
    assert any("below the liver" in reason for reason in votes)


def test_detection_follows_world_axes_not_array_order(body):
    label, affine = body
    flipped = label[:, :, ::-1]  # slices stored inferior-first: z axis of the affine points the other way
    flip_affine = affine.copy()
    flip_affine[2, 2] = -affine[2, 2]
    flip_affine[2, 3] = affine[2, 3] + affine[2, 2] * (label.shape[2] - 1)
    abdomen, abd_affine = crop_z(label, affine, -170, 95)
    assert detect_class_map_version(to_v1(flipped), flip_affine) == "v1"
    swapped = np.transpose(to_v1(abdomen), (2, 0, 1))
    swap_affine = np.eye(4)
    swap_affine[:3, :3] = abd_affine[:3, [2, 0, 1]]
    swap_affine[:3, 3] = abd_affine[:3, 3]
    assert detect_class_map_version(swapped, swap_affine) == "v1"


def test_detection_unknown_without_evidence():
    label = np.zeros((10, 10, 10), np.int16)
    label[2:5, 2:5, 2:5] = 1  # spleen only: numbered alike in v1 and v2
    assert detect_class_map_version(label, np.eye(4)) == "unknown"


def test_roi_subset_map_is_v2(body):
    label, affine = body
    keep = [V2.ids[o] for o in {o for d in load_benchmark().roi_diseases.values() for o in d} if o in V2.ids]
    subset = np.where(np.isin(label, keep), label, 0).astype(np.int16)
    assert detect_class_map_version(subset, affine) == "v2"


# ---------------------------------------------------------------------------------------- build_masks
def test_build_both_layouts_identical(tmp_path, body):
    label, affine = body
    save(label, affine, tmp_path / "ts" / "case_a.nii.gz")
    save_folder(label, affine, tmp_path / "ts" / "case_b")
    assert {s.layout for s in find_label_maps(tmp_path / "ts").values()} == {"multilabel", "folder"}
    report = build_masks(tmp_path / "ts", tmp_path / "out")
    assert report.ok and report.maps_read == 2 and report.written == 22
    want = expected_masks(label)
    for disease, mask in want.items():
        for case in ("case_a", "case_b"):
            out = tmp_path / "out" / disease / f"{case}.nii.gz"
            img = nib.load(str(out))
            assert img.get_data_dtype() == np.uint8
            assert np.allclose(img.affine, affine) and img.shape == label.shape
            assert np.array_equal(np.asanyarray(img.dataobj), mask), (disease, case)
    table = pd.read_csv(tmp_path / "out" / "masks_report.csv")
    assert list(table.columns) == ["case", "disease", "voxels", "volume_ml", "status", "message"]
    assert len(table) == 22 and set(table["status"]) == {OK}
    liver = table[(table.case == "case_a") & (table.disease == "fatty_liver")].iloc[0]
    assert liver.voxels == int((label == 5).sum())
    assert liver.volume_ml == pytest.approx(liver.voxels * 4 * 4 * 5 / 1000, rel=1e-3)


def test_folder_of_uncompressed_class_files_builds_the_same_masks(tmp_path, body):
    label, affine = body
    save_folder(label, affine, tmp_path / "ts" / "c1", suffix=".nii")
    report = build_masks(tmp_path / "ts", tmp_path / "out", diseases=["splenomegaly", "fatty_liver"])
    assert report.ok, report.failed
    for disease, mask in expected_masks(label, ["splenomegaly", "fatty_liver"]).items():
        got = nib.load(str(tmp_path / "out" / disease / "c1.nii.gz"))
        assert np.array_equal(np.asanyarray(got.dataobj), mask), disease


def test_folder_layout_reads_only_needed_class_files(tmp_path, body, monkeypatch):
    label, affine = body
    save_folder(label, affine, tmp_path / "ts" / "c1")
    import ctfm.core.nifti

    seen: list[str] = []
    real = ctfm.core.nifti.read_image_fast

    def spy(path):
        seen.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(ctfm.core.nifti, "read_image_fast", spy)
    build_masks(tmp_path / "ts", tmp_path / "out", diseases=["splenomegaly", "gallstone"])
    assert sorted(seen) == ["gallbladder.nii.gz", "spleen.nii.gz"]


def test_v1_map_refused_with_fix_and_accepted_with_v1_class_map(tmp_path, body):
    label, affine = body
    v1 = to_v1(label)
    save(v1, affine, tmp_path / "ts" / "old.nii.gz")
    save(label, affine, tmp_path / "ts" / "new.nii.gz")
    report = build_masks(tmp_path / "ts", tmp_path / "out", diseases=["adrenal_hyperplasia"])
    rows = {r.case: r for r in report.rows}
    assert rows["new"].status == OK
    assert rows["old"].status == FAILED and not report.ok
    assert "TotalSegmentator v1" in rows["old"].message and "--class-map" in rows["old"].message
    assert "re-run TotalSegmentator v2" in rows["old"].message
    assert not (tmp_path / "out" / "adrenal_hyperplasia" / "old.nii.gz").exists()
    v1_tsv = load_benchmark().root / load_benchmark().raw["class_maps"]["v1"]
    fixed = build_masks(
        tmp_path / "ts", tmp_path / "out1", diseases=["adrenal_hyperplasia"], class_map=v1_tsv
    )
    got = _read(tmp_path / "out1" / "adrenal_hyperplasia" / "old.nii.gz")
    assert np.array_equal(got, expected_masks(label, ["adrenal_hyperplasia"])["adrenal_hyperplasia"])
    assert {r.case: r.status for r in fixed.rows}["old"] == OK


def test_empty_and_missing_organs_flagged(tmp_path, body):
    label, affine = body
    no_kidney_left = np.where(label == V2.ids["kidney_left"], 0, label).astype(np.int16)
    no_spleen = np.where(label == V2.ids["spleen"], 0, label).astype(np.int16)
    save(no_kidney_left, affine, tmp_path / "ts" / "k.nii.gz")
    save(no_spleen, affine, tmp_path / "ts" / "s.nii.gz")
    report = build_masks(
        tmp_path / "ts", tmp_path / "out", diseases=["splenomegaly", "renal_cyst", "fatty_liver"]
    )
    status = {(r.case, r.disease): r for r in report.rows}
    assert status[("s", "splenomegaly")].status == EMPTY and status[("s", "splenomegaly")].voxels == 0
    assert status[("k", "renal_cyst")].status == ORGAN_MISSING
    assert "kidney_left" in status[("k", "renal_cyst")].message
    assert status[("k", "renal_cyst")].voxels > 0
    # kidney cysts are optional organs: their absence alone is not flagged
    assert status[("s", "renal_cyst")].status == OK
    assert report.ok and len(report.flagged) == 2
    assert _read(tmp_path / "out" / "splenomegaly" / "s.nii.gz").sum() == 0  # written, not skipped


def test_corrupt_and_missing_maps_fail_rows_and_batch_goes_on(tmp_path, body):
    label, affine = body
    save(label, affine, tmp_path / "ts" / "good.nii.gz")
    good = (tmp_path / "ts" / "good.nii.gz").read_bytes()
    (tmp_path / "ts" / "truncated.nii.gz").write_bytes(good[: len(good) // 2])
    (tmp_path / "ts" / "garbage.nii.gz").write_bytes(b"not a nifti at all")
    report = build_masks(
        tmp_path / "ts",
        tmp_path / "out",
        diseases=["fatty_liver"],
        cases=["good", "truncated", "garbage", "absent"],
    )
    status = {r.case: r for r in report.rows}
    assert status["good"].status == OK
    for case in ("truncated", "garbage", "absent"):
        assert status[case].status == FAILED and status[case].message
    assert "truncated.nii.gz" in status["truncated"].message
    assert "no label map" in status["absent"].message
    assert len(report.failed) == 3 and not report.ok


def test_resume_does_no_work_and_settings_change_redoes(tmp_path, body):
    label, affine = body
    save(label, affine, tmp_path / "ts" / "c1.nii.gz")
    save(label, affine, tmp_path / "ts" / "c2.nii.gz")
    first = build_masks(
        tmp_path / "ts", tmp_path / "out", diseases=["fatty_liver", "hydronephrosis"], workers=2
    )
    assert first.written == 4 and first.maps_read == 2
    outs = sorted((tmp_path / "out").rglob("*.nii.gz"))
    stamps = {p: p.stat().st_mtime_ns for p in outs}
    second = build_masks(tmp_path / "ts", tmp_path / "out", diseases=["fatty_liver", "hydronephrosis"])
    assert second.written == 0 and second.maps_read == 0 and second.skipped == 4
    assert {p: p.stat().st_mtime_ns for p in outs} == stamps
    assert [(r.case, r.voxels, r.status) for r in second.rows] == [
        (r.case, r.voxels, r.status) for r in first.rows
    ]
    assert second.rows[0].volume_ml == pytest.approx(first.rows[0].volume_ml)
    # a new margin, --force, or a label map with new content each redo work; a touched one does not
    assert build_masks(tmp_path / "ts", tmp_path / "out", ["fatty_liver"], margin_mm=5).written == 2
    assert build_masks(tmp_path / "ts", tmp_path / "out", ["fatty_liver"], margin_mm=5).written == 0
    assert (
        build_masks(tmp_path / "ts", tmp_path / "out", ["fatty_liver"], margin_mm=5, force=True).written == 2
    )
    later = (tmp_path / "out" / "fatty_liver" / "c1.nii.gz").stat().st_mtime + 10
    os.utime(tmp_path / "ts" / "c1.nii.gz", (later, later))
    assert build_masks(tmp_path / "ts", tmp_path / "out", ["fatty_liver"], margin_mm=5).written == 0
    save(
        np.where(label == V2.ids["spleen"], 0, label).astype(label.dtype),
        affine,
        tmp_path / "ts" / "c1.nii.gz",
    )
    redo = build_masks(tmp_path / "ts", tmp_path / "out", ["fatty_liver"], margin_mm=5)
    assert redo.written == 1 and redo.maps_read == 1
    assert not [p for p in (tmp_path / "out").rglob("*") if ".part" in p.name]


def test_the_same_inputs_give_byte_identical_masks_wherever_they_are(tmp_path, body):
    """Masks record what they were built from by content: a copied, touched dataset builds the same bytes
    (and so the same mask hashes in every store that extracts from them)."""
    label, affine = body
    save(label, affine, tmp_path / "a" / "c1.nii.gz")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    os.utime(tmp_path / "b" / "c1.nii.gz", (1e9, 1e9))
    for name in ("a", "b"):
        build_masks(tmp_path / name, tmp_path / f"out_{name}", ["fatty_liver", "hydronephrosis"])
    for disease in ("fatty_liver", "hydronephrosis"):
        a, b = (tmp_path / f"out_{n}" / disease / "c1.nii.gz" for n in ("a", "b"))
        assert a.read_bytes() == b.read_bytes()


def test_a_label_map_replaced_by_an_older_file_rebuilds_its_masks(tmp_path, body):
    label, affine = body
    save(label, affine, tmp_path / "ts" / "c1.nii.gz")
    save(np.where(label == V2.ids["liver"], 0, label), affine, tmp_path / "other.nii.gz")  # no liver
    assert build_masks(tmp_path / "ts", tmp_path / "out", ["fatty_liver"]).rows[0].status == OK
    os.replace(tmp_path / "other.nii.gz", tmp_path / "ts" / "c1.nii.gz")
    os.utime(tmp_path / "ts" / "c1.nii.gz", (1e9, 1e9))  # as `cp -p` or `rsync -a` leave it: years older
    redo = build_masks(tmp_path / "ts", tmp_path / "out", ["fatty_liver"])
    assert redo.written == 1 and redo.rows[0].status == EMPTY
    assert _read(tmp_path / "out" / "fatty_liver" / "c1.nii.gz").sum() == 0


def test_a_failed_rebuild_removes_the_stale_mask_and_keeps_other_files(tmp_path, body):
    label, affine = body
    save(label, affine, tmp_path / "ts" / "c1.nii.gz")
    save(label, affine, tmp_path / "ts" / "c3.nii.gz")
    build_masks(tmp_path / "ts", tmp_path / "out", ["fatty_liver"])
    mine = tmp_path / "out" / "fatty_liver" / "c2.nii.gz"
    save(np.ones((4, 4, 4), np.uint8), affine, mine)  # a mask the user made by hand
    (tmp_path / "ts" / "c1.nii.gz").write_bytes(b"corrupt now")
    (tmp_path / "ts" / "c3.nii.gz").unlink()
    report = build_masks(tmp_path / "ts", tmp_path / "out", ["fatty_liver"], cases=["c1", "c2", "c3"])
    assert [r.status for r in report.rows] == [FAILED] * 3
    assert sorted(p.name for p in (tmp_path / "out" / "fatty_liver").iterdir()) == ["c2.nii.gz"]


def test_a_class_map_without_a_needed_organ_is_refused_up_front(tmp_path, body):
    label, affine = body
    save(label, affine, tmp_path / "ts" / "c1.nii.gz")
    tsv = tmp_path / "renamed.tsv"
    rows = [f"{i}\t{'Liver' if n == 'liver' else n}" for i, n in V2.names.items()]
    tsv.write_text("id\tname\n" + "\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match=r"has no class named liver \(needed by fatty_liver"):
        build_masks(tmp_path / "ts", tmp_path / "out", ["fatty_liver", "splenomegaly"], class_map=tsv)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="finite"):
        build_masks(tmp_path / "ts", tmp_path / "out", ["fatty_liver"], margin_mm=float("inf"))


def test_an_empty_or_ambiguous_totalsegmentator_folder_is_an_error(tmp_path, body):
    (tmp_path / "ts").mkdir()
    with pytest.raises(DataError, match="no label maps"):
        build_masks(tmp_path / "ts", tmp_path / "out", ["fatty_liver"])
    label, affine = body
    save(label, affine, tmp_path / "ts" / "c1.nii.gz")
    save(label, affine, tmp_path / "ts" / "c1.nii")
    with pytest.raises(DataError, match=r"c1\.nii and c1\.nii\.gz are both case 'c1'"):
        build_masks(tmp_path / "ts", tmp_path / "out", ["fatty_liver"])


def test_cases_from_labels(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    pd.DataFrame(
        {"case_id": ["a.nii.gz", "b.nii.gz"], "split": ["train", "val"], "gallstone": [0, 1]}
    ).to_csv(labels / "gallstone.csv", index=False)
    pd.DataFrame({"id": ["b.nii.gz"], "liver_cyst": [1], "split": ["train"]}).to_csv(
        labels / "liver_cyst.csv", index=False
    )
    assert cases_from_labels(labels) == {"a": ["gallstone"], "b": ["gallstone", "liver_cyst"]}
    assert cases_from_labels(labels, ["liver_cyst"]) == {"b": ["liver_cyst"]}
    with pytest.raises(Exception, match=r"splenomegaly\.csv"):
        cases_from_labels(labels, ["splenomegaly"])


def test_totalsegmentator_missing_says_what(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "totalsegmentator" else real(name, *a)
    )
    line = totalsegmentator_missing()
    assert line is not None and "\n" not in line
    assert "TotalSegmentator is not installed" in line and "ctfm[totalseg]" in line


FAKE_API = """
import json
from pathlib import Path

import nibabel as nib
import numpy as np


def totalsegmentator(input, output=None, ml=False, task="total", roi_subset=None, device="gpu", quiet=False,
                     roi_subset_robust=None):
    calls = Path(__file__).with_name("calls.jsonl")
    with calls.open("a") as fh:
        fh.write(json.dumps({"input": str(input), "output": str(output), "ml": ml, "task": task,
                             "roi_subset": roi_subset, "roi_subset_robust": roi_subset_robust}) + "\\n")
    img = nib.load(str(input))
    label = (np.asanyarray(img.dataobj) > 0).astype(np.uint8)  # "spleen" wherever the image is positive
    nib.save(nib.Nifti1Image(label, img.affine), str(output))
    return None
"""


def _fake_totalsegmentator(root: Path, weights: Path) -> Path:
    pkg = root / "totalsegmentator"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text(f"def get_weights_dir():\n    return {str(weights)!r}\n")
    (pkg / "python_api.py").write_text(FAKE_API)
    return pkg


def test_run_totalsegmentator_asks_only_for_needed_organs(tmp_path, monkeypatch):
    from ctfm.masks import organs_needed, run_totalsegmentator

    weights = tmp_path / "weights"
    pkg = _fake_totalsegmentator(tmp_path / "site", weights)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m.startswith("totalsegmentator")]:
        monkeypatch.delitem(sys.modules, name)
    assert "Dataset291, Dataset297 are missing" in totalsegmentator_missing()
    for task in (
        "Dataset291_TotalSegmentator_part1_organs_1559subj",
        "Dataset297_TotalSegmentator_total_3mm",
    ):
        (weights / task).mkdir(parents=True)
    assert totalsegmentator_missing() is None
    images = tmp_path / "images"
    image = np.zeros((8, 8, 8), np.int16)
    image[2:4, 2:4, 2:4] = 100
    for case in ("a", "b"):
        save(image, np.eye(4), images / f"{case}.nii.gz")
    save(image.astype(bool).astype(np.int16), np.eye(4), tmp_path / "ts" / "a.nii.gz")  # a has its map
    done = run_totalsegmentator(images, tmp_path / "ts", ["splenomegaly", "gallstone"])
    assert done == ["b"]
    call = json.loads((pkg / "calls.jsonl").read_text().splitlines()[0])
    assert (
        call["roi_subset_robust"] == organs_needed(["splenomegaly", "gallstone"]) == ["spleen", "gallbladder"]
    )
    assert call["ml"] is True and call["task"] == "total" and call["input"].endswith("b.nii.gz")
    report = build_masks(tmp_path / "ts", tmp_path / "out", ["splenomegaly"], class_map="v2")
    assert report.ok and report.written == 2
    assert _read(tmp_path / "out" / "splenomegaly" / "b.nii.gz").sum() == 8


def test_label_maps_with_a_singleton_axis_build_and_nan_or_fractions_fail_alone(tmp_path, body):
    """(X, Y, Z, 1) maps build as extraction reads such scans; a NaN or fractional id fails that case with
    one line instead of a cryptic numpy error or organs rounded into being."""
    label, affine = body
    save(label[..., None], affine, tmp_path / "ts" / "singleton.nii.gz")
    for case, bad in (("nan", np.nan), ("fraction", 5.4)):
        values = label.astype(np.float32)
        values[0, 0, 0] = bad
        save(values, affine, tmp_path / "ts" / f"{case}.nii.gz")
    report = build_masks(tmp_path / "ts", tmp_path / "out", diseases=["fatty_liver"])
    status = {r.case: r for r in report.rows}
    assert status["singleton"].status == OK
    mask = _read(tmp_path / "out" / "fatty_liver" / "singleton.nii.gz")
    assert np.array_equal(mask, expected_masks(label, ["fatty_liver"])["fatty_liver"])
    for case in ("nan", "fraction"):
        assert status[case].status == FAILED
        assert "label map holds non-integer or NaN values" in status[case].message
