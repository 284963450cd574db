"""The shared pieces every stage relies on: benchmark config, label CSVs, atomic writes, NIfTI I/O, CLI errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import ConfigError, DataError
from ctfm.core.fsutil import atomic_path, link_or_copy, write_text_atomic
from ctfm.core.hashing import digest, sha256_file
from ctfm.core.labels import read_labels
from ctfm.core.nifti import case_id, geometry, list_volumes, read_array, write


def test_benchmark_has_the_15_amos_diseases_and_roi_organs():
    bench = load_benchmark()
    assert len(bench.diseases) == 15
    assert len(bench.roi_diseases) == 11
    assert set(bench.nonroi_diseases) == {
        "atherosclerosis",
        "colorectal_cancer",
        "ascites",
        "lymphadenopathy",
    }
    assert bench.roi_organs("cholecystitis") == ("gallbladder", "liver")
    assert bench.view_of("ascites") == "full"
    assert bench.view_of("gallstone") == "gallstone"
    with pytest.raises(ConfigError, match="unknown disease 'nope'"):
        bench.view_of("nope")


def test_every_roi_organ_exists_in_the_v2_class_map():
    bench = load_benchmark()
    cmap = bench.class_map("v2")
    organs = {o for organs in bench.roi_diseases.values() for o in organs}
    assert all(o in cmap.ids for o in organs)
    assert max(cmap.names) == 117 and len(cmap.names) == 117


def test_v1_map_agrees_with_v2_only_on_ids_1_to_6():
    bench = load_benchmark()
    v1, v2 = bench.class_map("v1"), bench.class_map("v2")
    assert len(v1.names) == 104
    same = [i for i in v1.names if v2.names.get(i) == v1.names[i]]
    assert same == [1, 2, 3, 4, 5, 6]


# TotalSegmentator v2 `total` ids, from its published class table: every organ a ROI disease needs, and the
# ids whose meaning differs from v1 that the v1/v2 detector relies on
V2_IDS = {
    "spleen": 1,
    "kidney_right": 2,
    "kidney_left": 3,
    "gallbladder": 4,
    "liver": 5,
    "stomach": 6,
    "pancreas": 7,
    "adrenal_gland_right": 8,
    "adrenal_gland_left": 9,
    "lung_upper_lobe_left": 10,
    "lung_lower_lobe_left": 11,
    "lung_upper_lobe_right": 12,
    "kidney_cyst_left": 23,
    "kidney_cyst_right": 24,
    "vertebrae_L5": 27,
    "vertebrae_L1": 31,
    "costal_cartilages": 117,
}


def test_class_map_has_the_117_v2_total_classes():
    shipped = load_benchmark().class_map("v2")
    assert sorted(shipped.names) == list(range(1, 118))
    assert len(set(shipped.names.values())) == 117
    assert {name: shipped.ids[name] for name in V2_IDS} == V2_IDS


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fatty_liver.csv"
    path.write_text(text)
    return path


def test_labels_parsed_by_column_name_with_id_alias(tmp_path):
    path = _csv(tmp_path, "fatty_liver,split,id,fold0\n1,train,a.nii.gz,val\n0,val,b.nii.gz,train\n")
    table = read_labels(path)
    assert table["case"].tolist() == ["a", "b"]
    assert table["file"].tolist() == ["a.nii.gz", "b.nii.gz"]
    assert table["label"].tolist() == [1, 0]
    assert table["fold0"].tolist() == ["val", "train"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("case_id,fatty_liver\na.nii.gz,1\n", "missing column.*split"),
        ("case_id,split\na.nii.gz,train\n", "missing column.*fatty_liver"),
        ("case_id,split,fatty_liver\na.nii.gz,training,1\n", "unknown split"),
        ("case_id,split,fatty_liver\na.nii.gz,train,yes\n", "non-integer"),
        ("case_id,split,fatty_liver\na.nii.gz,train,inf\n", "out-of-range fatty_liver label for 1 case"),
        ("case_id,split,fatty_liver\na.nii.gz,train,1e20\n", r"whole numbers 0\.\.10000"),
        ("case_id,split,fatty_liver\na.nii.gz,train,-1\n", "out-of-range"),
        ("case_id,split,fatty_liver\na.nii.gz,train,1\na.nii.gz,val,0\n", "duplicated"),
    ],
)
def test_bad_label_files_name_the_file_and_problem(tmp_path, text, message):
    path = _csv(tmp_path, text)
    with pytest.raises(DataError, match=message) as info:
        read_labels(path)
    assert str(path) in str(info.value)


def test_atomic_path_leaves_old_content_when_the_write_fails(tmp_path):
    dest = tmp_path / "out.txt"
    write_text_atomic(dest, "old")
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path):
    plain, atomic = tmp_path / "plain.txt", tmp_path / "atomic.txt"
    plain.write_text("x")
    write_text_atomic(atomic, "x")
    with atomic_path(tmp_path / "durable.bin", durable=True) as tmp:
        tmp.write_bytes(b"x")
    mode = plain.stat().st_mode & 0o777
    assert atomic.stat().st_mode & 0o777 == mode  # not mkstemp's private 0600
    assert (tmp_path / "durable.bin").stat().st_mode & 0o777 == mode


def test_link_or_copy_links_without_touching_the_source_or_copies(tmp_path):
    src, dest = tmp_path / "src.bin", tmp_path / "sub" / "dest.bin"
    src.write_bytes(b"data")
    src.chmod(0o600)
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    assert link_or_copy(src, dest) is True
    assert dest.read_bytes() == b"data" and dest.stat().st_ino == src.stat().st_ino
    assert src.stat().st_mode & 0o777 == 0o600  # a shared inode keeps its owner's permissions
    copied = tmp_path / "copy.bin"
    assert link_or_copy(src, copied, link=False) is False
    assert copied.read_bytes() == b"data" and copied.stat().st_ino != src.stat().st_ino
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest.bin"]  # no temporaries left


def test_nifti_round_trip_keeps_dtype_and_affine(tmp_path):
    affine = np.diag([-0.7, -0.7, 3.0, 1.0])
    affine[:3, 3] = [10, -20, 30]
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 1000
    path = write(tmp_path / "case_1.nii.gz", data, affine)
    back, img = read_array(path)
    assert back.dtype == np.int16 and np.array_equal(back, data)
    assert geometry(path).matches(geometry(path)) and np.allclose(img.affine, affine)
    assert geometry(path).spacing == pytest.approx((0.7, 0.7, 3.0))
    assert case_id(path) == "case_1" and list_volumes(tmp_path) == [path]
    assert len(sha256_file(path)) == 64


def test_digest_changes_with_any_setting_and_ignores_key_order():
    assert digest({"a": 1, "b": [2]}) == digest({"b": [2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})
    assert digest([Path("x")]) == digest(["x"])  # paths count by their text
    assert len(digest({"a": 1}, length=12)) == 12


def test_truncated_nifti_raises_data_error_naming_the_file(tmp_path):
    noise = np.random.default_rng(0).integers(-1000, 1000, (20, 20, 20), dtype=np.int16)
    path = write(tmp_path / "c.nii.gz", noise, np.eye(4))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"c\.nii\.gz.*corrupt"):
        read_array(path)


def test_cli_prints_version_and_turns_user_errors_into_one_line(cli, tmp_path):
    assert cli("--version").stdout.startswith("ctfm ")
    assert "Usage" in cli("--help").stdout
    usage = cli("probe", "lp", check=False)
    assert usage.returncode == 2 and "Missing option '--store'" in usage.stderr
    mistake = cli("data", "check", tmp_path / "absent", check=False)
    assert mistake.returncode == 2 and "absent: not a folder" in mistake.stderr
    for proc in (usage, mistake):
        assert "Traceback" not in proc.stderr
