"""`ctfm data check`: passes on a fresh synthetic folder, catches each kind of damage on a copy."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import ConfigError, DataError
from ctfm.core.nifti import read_array, write
from ctfm.data.check import check_benchmark
from ctfm.data.synth import generate_benchmark

CASE = "synth_0001"


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory):
    return generate_benchmark(tmp_path_factory.mktemp("check") / "bench", cases=6, seed=1)


@pytest.fixture
def bench(small_bench, tmp_path):
    """A private copy to damage."""
    return shutil.copytree(small_bench, tmp_path / "bench")


def _problems(root, file=None):
    report = check_benchmark(root, workers=2)
    return [p for p in report.problems if file is None or p.file == file]


def _edit_csv(root, disease, edit):
    path = root / "labels" / f"{disease}.csv"
    frame = pd.read_csv(path, dtype=str)
    edit(frame)
    frame.to_csv(path, index=False)


def test_fresh_synth_folder_passes(synth_bench):
    report = check_benchmark(synth_bench, workers=2)
    assert report.ok, report.problems
    assert report.counts["images"] == 45 and report.counts["label maps"] == 40


def test_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        check_benchmark(tmp_path / "nope")


def test_csv_without_case_id_column(bench):
    _edit_csv(bench, "gallstone", lambda f: f.rename(columns={"case_id": "patient"}, inplace=True))
    (problem,) = _problems(bench, "labels/gallstone.csv")
    assert "missing column(s) case_id" in problem.problem


def test_csv_without_label_column(bench):
    _edit_csv(bench, "ascites", lambda f: f.drop(columns=["ascites"], inplace=True))
    (problem,) = _problems(bench, "labels/ascites.csv")
    assert "missing column(s) ascites" in problem.problem


def test_csv_with_unknown_split(bench):
    _edit_csv(bench, "fatty_liver", lambda f: f.loc.__setitem__((0, "split"), "training"))
    (problem,) = _problems(bench, "labels/fatty_liver.csv")
    assert "unknown split" in problem.problem and "training" in problem.problem


def test_csv_with_non_integer_labels(bench):
    _edit_csv(bench, "splenomegaly", lambda f: f.loc.__setitem__((2, "splenomegaly"), "0.5"))
    (problem,) = _problems(bench, "labels/splenomegaly.csv")
    assert "non-integer" in problem.problem


def test_listed_case_without_image(bench):
    (bench / "images" / f"{CASE}.nii.gz").unlink()
    problems = _problems(bench)
    listed = [p for p in problems if "listed case has no image" in p.problem]
    assert len(listed) == len(load_benchmark().diseases) and {p.case for p in listed} == {CASE}
    assert any(p.file == f"totalseg/{CASE}.nii.gz" and "without an image" in p.problem for p in problems)


def test_truncated_image_is_caught_by_reading_the_data(bench):
    path = bench / "images" / f"{CASE}.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    (problem,) = _problems(bench, f"images/{CASE}.nii.gz")
    assert "truncated or corrupt" in problem.problem


def test_label_map_with_other_shape(bench):
    seg, img = read_array(bench / "totalseg" / f"{CASE}.nii.gz")
    write(bench / "totalseg" / f"{CASE}.nii.gz", np.ascontiguousarray(seg[:-3]), img.affine)
    (problem,) = _problems(bench, f"totalseg/{CASE}.nii.gz")
    assert "shape differs from its image" in problem.problem


def test_label_map_with_other_affine(bench):
    seg, img = read_array(bench / "totalseg" / f"{CASE}.nii.gz")
    affine = img.affine.copy()
    affine[:3, 3] += 12.0
    write(bench / "totalseg" / f"{CASE}.nii.gz", seg, affine)
    (problem,) = _problems(bench, f"totalseg/{CASE}.nii.gz")
    assert "affine differs from its image" in problem.problem
    own, ref = problem.problem.split(": ", 1)[1].split(" vs ")
    assert own != ref and "origin" in own  # the message shows what differs


def test_label_map_with_non_integer_values(bench):
    seg, img = read_array(bench / "totalseg" / f"{CASE}.nii.gz")
    values = seg.astype(np.float32)
    values[values == 5] = 5.5
    write(bench / "totalseg" / f"{CASE}.nii.gz", values, img.affine)
    (problem,) = _problems(bench, f"totalseg/{CASE}.nii.gz")
    assert "non-integer values" in problem.problem


def test_v1_numbered_label_map(bench):
    bm = load_benchmark()
    v1_ids = bm.class_map("v1").ids
    lut = np.zeros(256, np.uint8)
    for i, name in bm.class_map("v2").names.items():
        lut[i] = v1_ids.get(name, 0)
    seg, img = read_array(bench / "totalseg" / f"{CASE}.nii.gz")
    write(bench / "totalseg" / f"{CASE}.nii.gz", lut[seg], img.affine)
    (problem,) = _problems(bench, f"totalseg/{CASE}.nii.gz")
    assert "v1 numbering where v2 is expected" in problem.problem


def test_damaged_mask_geometry_in_test_demo(bench):
    masks = sorted((bench / "test_demo" / "fg_masks").rglob("*.nii.gz"))
    mask, img = read_array(masks[0])
    write(masks[0], np.ascontiguousarray(mask[1:]), img.affine)
    problems = _problems(bench, str(masks[0].relative_to(bench)))
    assert len(problems) == 1 and "mask shape differs" in problems[0].problem


def test_a_case_with_two_volumes_is_flagged(bench):
    import gzip

    src = bench / "totalseg" / f"{CASE}.nii.gz"
    (bench / "totalseg" / f"{CASE}.nii").write_bytes(gzip.decompress(src.read_bytes()))
    problems = [p for p in check_benchmark(bench).problems if "both this case" in p.problem]
    assert [(p.case, p.problem) for p in problems] == [
        (CASE, f"{CASE}.nii and {CASE}.nii.gz are both this case; keep one")
    ]


def test_a_label_seen_once_or_never_in_train_is_flagged(synth_bench, bench):
    from ctfm.core.labels import read_labels
    from ctfm.data.check import _class_problems

    table = read_labels(synth_bench / "labels" / "fatty_liver.csv")
    assert _class_problems(table) == []
    table.loc[0, "label"] = 7  # a typo for 1
    held_out = table.index[table["split"] != "train"][:2]
    table.loc[held_out, "label"] = 5  # a class only val/test cases have
    assert sorted(problem for _, problem in _class_problems(table)) == [
        "class 5 never appears in train (2 cases)",
        "class 7 has this case only: a typo? every class needs cases",
    ]
    assert _class_problems(table.iloc[:19]) == []  # tiny demo sets are not judged
    with pytest.raises(ConfigError, match="--class-map 'bogus' is not one of v2, v1"):
        check_benchmark(bench, class_map="bogus")


def test_scans_a_run_could_not_use_are_flagged(bench):
    """Each of these made `extract` stop, drop or mis-measure a case without `data check` saying a word."""
    import gzip

    import nibabel as nib

    images = bench / "images"
    scan, img = read_array(images / f"{CASE}.nii.gz")
    holed = scan.astype(np.float32)
    holed[:2, :2, :2] = np.nan
    write(images / "synth_0002.nii.gz", holed, img.affine)
    write(images / "synth_0003.nii.gz", scan, np.diag([1e-6, 1e-6, 1e-6, 1.0]))
    shutil.copy2(images / f"{CASE}.nii.gz", images / "scan 01.nii.gz")
    (images / "folder.nii.gz").mkdir()
    found = {(p.file, p.problem) for p in _problems(bench)}
    assert ("images/synth_0002.nii.gz", f"8 NaN or infinite voxel(s) of {scan.size}") in found
    assert any(f == "images/synth_0003.nii.gz" and "outside 0.01..100 mm" in p for f, p in found)
    assert any(f == "images/scan 01.nii.gz" and "not a safe file name" in p for f, p in found)
    assert ("images/folder.nii.gz", "is a folder, not a NIfTI file") in found

    # accepted as `extract` accepts them: an uncompressed scan, a trailing singleton axis
    (images / "synth_0004.nii").write_bytes(gzip.decompress((images / "synth_0004.nii.gz").read_bytes()))
    (images / "synth_0004.nii.gz").unlink()
    seg, seg_img = read_array(bench / "totalseg" / "synth_0005.nii.gz")
    write(bench / "totalseg" / "synth_0005.nii.gz", seg[..., None], seg_img.affine)
    # an RGB label map is one problem, not the end of the check
    rgb = np.zeros(seg.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, seg_img.affine), bench / "totalseg" / "synth_0000.nii.gz")
    after = _problems(bench)
    assert not [p for p in after if "synth_0004" in p.file or p.case == "synth_0004"], after
    assert not [p for p in after if p.file == "totalseg/synth_0005.nii.gz"], after
    (rgb_problem,) = [p.problem for p in after if p.file == "totalseg/synth_0000.nii.gz"]
    assert rgb_problem.startswith("voxel type") and "is not numeric (an RGB image?)" in rgb_problem


def test_hidden_volume_files_are_named_not_counted(bench):
    """A macOS `._` copy or an interrupted write's temporary is skipped by every stage; the check says so."""
    counts = check_benchmark(bench, workers=2).counts
    shutil.copy2(bench / "images" / f"{CASE}.nii.gz", bench / "images" / f"._{CASE}.nii.gz")
    mask = sorted((bench / "test_demo" / "fg_masks").iterdir())[0]
    (mask / ".synth_0002.nii.gz.x1y2.part.nii.gz").write_bytes(b"half")
    report = check_benchmark(bench, workers=2)
    assert report.ok, report.problems  # skipped, so nothing wrong with the benchmark itself
    assert report.ignored == [
        f"images/._{CASE}.nii.gz",
        f"test_demo/fg_masks/{mask.name}/.synth_0002.nii.gz.x1y2.part.nii.gz",
    ]
    assert report.counts == counts
