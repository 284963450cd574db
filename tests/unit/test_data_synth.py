"""The synthetic benchmark: layout, CT-like geometry, stratified labels, visible planted findings, determinism."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import ConfigError
from ctfm.core.labels import read_labels
from ctfm.core.nifti import read_array
from ctfm.data.geometry import SHAPES, case_geometry, case_rngs
from ctfm.data.phantom import render_case
from ctfm.data.synth import assign_labels, generate_benchmark
from ctfm.masks import disease_masks

BENCH = load_benchmark()
V2 = BENCH.class_map("v2")


def _stats(root):
    """Per case: label values and organ HU/volume statistics read back from the written files."""
    labels = {d: read_labels(root / "labels" / f"{d}.csv").set_index("case")["label"] for d in BENCH.diseases}
    rows = []
    for f in sorted((root / "images").glob("*.nii.gz")):
        img, nii = read_array(f)
        seg, _ = read_array(root / "totalseg" / f.name)
        voxel_ml = abs(np.linalg.det(nii.affine[:3, :3])) / 1000

        def organ(*names, img=img, seg=seg):
            return img[np.isin(seg, [V2.ids[n] for n in names])]

        kidney = organ("kidney_left", "kidney_right")
        rows.append(
            {
                "case": f.name[: -len(".nii.gz")],
                "liver_minus_spleen": organ("liver").mean() - organ("spleen").mean(),
                "spleen_ml": (seg == V2.ids["spleen"]).sum() * voxel_ml,
                "liver_water": (organ("liver") < 15).mean(),
                "liver_bright": (organ("liver") > 250).sum(),
                "kidney_bright": (kidney > 300).sum(),
                "kidney_median": np.median(kidney),
                "kidney_water": ((kidney > -20) & (kidney < 20)).mean(),
                "gb_bright": (organ("gallbladder") > 200).sum(),
                "aorta_bright": (organ("aorta") > 300).sum(),
                "free_water": ((img > -5) & (img < 30))[(seg == 0) & (img > -500)].mean(),  # outside organs
                "cyst_voxels": np.isin(seg, [V2.ids["kidney_cyst_left"], V2.ids["kidney_cyst_right"]]).sum(),
            }
        )
    table = pd.DataFrame(rows).set_index("case")
    for d, col in labels.items():
        table[d] = col
    return table


@pytest.fixture(scope="module")
def stats(synth_bench):
    return _stats(synth_bench)


def test_layout_has_every_public_folder(synth_bench):
    assert len(list((synth_bench / "images").glob("*.nii.gz"))) == 40
    assert len(list((synth_bench / "totalseg").glob("*.nii.gz"))) == 40
    assert sorted(p.stem for p in (synth_bench / "labels").glob("*.csv")) == sorted(BENCH.diseases)
    demo = sorted(p.name for p in (synth_bench / "test_demo").glob("*.nii.gz"))  # flat, as published
    assert len(demo) == 5
    assert sorted(p.name for p in (synth_bench / "test_demo").iterdir() if p.is_dir()) == ["fg_masks"]
    test_cases = set(read_labels(synth_bench / "labels" / "gallstone.csv").query("split == 'test'")["file"])
    assert set(demo) <= test_cases


def test_test_demo_has_the_roi_masks_ctfm_masks_builds(synth_bench):
    for disease in BENCH.roi_diseases:
        masks = sorted((synth_bench / "test_demo" / "fg_masks" / disease).glob("*.nii.gz"))
        assert len(masks) == 5, disease
    case = masks[0].name
    seg, img = read_array(synth_bench / "totalseg" / case)
    expected = disease_masks(seg, img.affine, None, "v2")
    for disease, want in expected.items():
        mask, _ = read_array(synth_bench / "test_demo" / "fg_masks" / disease / case)
        assert mask.dtype == np.uint8 and np.array_equal(mask, want), disease
    spleen = seg == V2.ids["spleen"]
    assert spleen.any() and np.array_equal(expected["splenomegaly"].astype(bool), spleen)


def test_images_are_ct_like_with_real_affines(synth_bench):
    orientations, spacings = set(), []
    for f in sorted((synth_bench / "images").glob("*.nii.gz")):
        img = nib.load(f)
        seg = nib.load(synth_bench / "totalseg" / f.name)
        data = np.asarray(img.dataobj)
        assert data.dtype == np.int16 and data.ndim == 3
        assert -1024 <= data.min() < -900 and data.max() > 300  # air outside, bone inside
        assert not np.allclose(img.affine, np.eye(4))
        assert seg.shape == img.shape and np.allclose(seg.affine, img.affine)
        sx, sy, sz = img.header.get_zooms()
        (xy_lo, xy_hi), (z_lo, z_hi) = SHAPES["demo"].inplane_mm, SHAPES["demo"].slice_mm  # a coarse grid
        assert xy_lo <= sx <= xy_hi and sx == sy and z_lo <= sz <= z_hi and sx >= 2.5 and sz >= 5
        assert all(50 <= n <= 200 for n in data.shape[:2]) and 40 <= data.shape[2] <= 100
        assert 280 <= data.shape[0] * sx <= 450  # an adult's width in mm, at any spacing
        orientations.add(nib.aff2axcodes(img.affine))
        spacings.append((sx, sz))
        labels = set(np.unique(np.asarray(seg.dataobj)).tolist()) - {0}
        assert labels <= set(V2.names)
        needed = {
            "liver",
            "spleen",
            "kidney_left",
            "kidney_right",
            "gallbladder",
            "aorta",
            "pancreas",
            "colon",
        }
        assert {V2.ids[n] for n in needed} <= labels
        assert any(i > 104 for i in labels)  # v2-only rib ids (rib_right_2 and below)
    assert len(orientations) >= 2
    assert len(set(spacings)) == len(spacings)


def test_labels_are_stratified_with_plausible_prevalence(synth_bench):
    for disease in BENCH.diseases:
        raw = pd.read_csv(synth_bench / "labels" / f"{disease}.csv")
        assert list(raw.columns) == ["case_id", "split", disease, *[f"fold{k}" for k in range(5)]]
        table = read_labels(synth_bench / "labels" / f"{disease}.csv")
        assert 0.1 <= table["label"].mean() <= 0.4, disease
        for split in ("train", "val", "test"):
            part = table[table["split"] == split]
            assert 0 < part["label"].sum() < len(part), (disease, split)


def test_assign_labels_folds_partition_train_and_val():
    table = assign_labels(100, 3, BENCH.diseases)
    non_test = table[table["split"] != "test"]
    val_counts = (non_test[[f"fold{k}" for k in range(5)]] == "val").sum(axis=1)
    assert (val_counts == 1).all()
    assert (table["split"] == table["fold0"]).all()
    assert (table["split"] == "test").sum() == 20
    prevalences = table[list(BENCH.diseases)].mean()
    assert prevalences.between(0.1, 0.4).all()
    both = (table["fatty_liver"] == 1) & (table["liver_cyst"] == 1)
    assert table[list(BENCH.diseases)].sum(axis=1).max() >= 3 or both.any()  # findings co-occur


def test_manifest_records_version_seed_and_arguments(synth_bench):
    manifest = json.loads((synth_bench / "manifest.json").read_text())
    assert manifest["generator_version"] and manifest["seed"] == 0
    assert manifest["arguments"] == {"cases": 40, "seed": 0, "shape": "demo", "totalseg_folders": False}
    assert len(manifest["cases"]) == 40
    for disease in BENCH.diseases:  # every positive label has its finding planted, none of them empty
        planted = [c["findings"][disease] for c in manifest["cases"] if disease in c["findings"]]
        assert len(planted) == manifest["diseases"][disease]["positives"] > 0, disease
        assert not any(text.endswith(" 0 voxels") or " 0 voxels " in text for text in planted), disease


def test_fatty_liver_is_darker_than_the_spleen(stats):
    g = stats.groupby("fatty_liver")["liver_minus_spleen"].mean()
    assert g[1] < g[0] - 20


def test_splenomegaly_spleen_is_larger(stats):
    g = stats.groupby("splenomegaly")["spleen_ml"].mean()
    assert g[1] > 2 * g[0]
    assert 100 < g[0] < 400  # an adult's spleen in ml: the demo shape is a real-size patient on a coarse grid


def test_ascites_is_free_water_density_fluid_outside_the_organs(stats):
    g = stats.groupby("ascites")["free_water"]
    assert g.min()[1] > 3 * g.max()[0]  # every positive above every negative


@pytest.mark.parametrize(
    ("disease", "column"),
    [
        ("kidney_stone", "kidney_bright"),
        ("gallstone", "gb_bright"),
        ("liver_calcifications", "liver_bright"),
        ("atherosclerosis", "aorta_bright"),
        ("renal_cyst", "cyst_voxels"),
    ],
)
def test_dense_findings_only_in_positives(stats, disease, column):
    g = stats.groupby(disease)[column]
    assert g.max()[0] == 0  # no negative case has the finding
    assert (stats.loc[stats[disease] == 1, column] > 0).mean() >= 0.8


def test_liver_cysts_add_water_density_voxels(stats):
    clear = stats[stats["fatty_liver"] == 0]  # a fatty liver is itself near water density
    g = clear.groupby("liver_cyst")["liver_water"].mean()
    assert g[1] > 3 * g[0]  # 1-3 real-size cysts (1-3 cm) in an adult liver


def test_hydronephrosis_adds_urine_in_enhanced_kidneys(stats):
    enhanced = stats[stats["kidney_median"] > 80]
    g = enhanced.groupby("hydronephrosis")["kidney_water"].mean()
    assert g[1] > 1.5 * g[0]


def test_same_seed_same_case_other_seed_differs():
    ids = V2.ids
    a = render_case(5, 2, "demo", {"gallstone": 1}, ids)
    b = render_case(5, 2, "demo", {"gallstone": 1}, ids)
    c = render_case(6, 2, "demo", {"gallstone": 1}, ids)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labelmap, b.labelmap)
    assert np.array_equal(a.affine, b.affine)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_findings_do_not_move_the_anatomy():
    ids = V2.ids
    neg = render_case(1, 4, "demo", {}, ids)
    pos = render_case(1, 4, "demo", {"liver_calcifications": 1}, ids)
    assert np.array_equal(neg.labelmap, pos.labelmap)
    assert (pos.image != neg.image).any()


def test_full_shape_is_512_in_plane():
    geo = case_geometry(case_rngs(0, 0)[0], SHAPES["full"])
    assert geo.shape[:2] == (512, 512)
    assert 0.6 <= geo.spacing[0] <= 0.9 and 1.5 <= geo.spacing[2] <= 5.0


def test_generation_is_byte_identical_whatever_the_workers(tmp_path):
    one = generate_benchmark(tmp_path / "one", cases=4, seed=7, workers=1)
    two = generate_benchmark(tmp_path / "two", cases=4, seed=7, workers=2)
    other = generate_benchmark(tmp_path / "other", cases=4, seed=8, workers=1)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for rel in files:
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
    name = "images/synth_0000.nii.gz"
    assert (one / name).read_bytes() != (other / name).read_bytes()


def test_totalseg_folders_flag_writes_one_file_per_class(tmp_path):
    root = generate_benchmark(tmp_path / "b", cases=1, seed=0, totalseg_folders=True)
    files = sorted((root / "totalseg_folders" / "synth_0000").glob("*.nii.gz"))
    assert len(files) == len(V2.names)
    liver, _ = read_array(root / "totalseg_folders" / "synth_0000" / "liver.nii.gz")
    seg, _ = read_array(root / "totalseg" / "synth_0000.nii.gz")
    assert np.array_equal(liver.astype(bool), seg == V2.ids["liver"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"cases": 0}, "--cases"), ({"seed": -1}, "--seed"), ({"shape": "huge"}, "--shape")],
)
def test_bad_arguments_are_config_errors(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        generate_benchmark(tmp_path / "x", **kwargs)


def test_rerun_with_fewer_cases_drops_stale_ones_and_foreign_folders_are_refused(tmp_path):
    root = generate_benchmark(tmp_path / "b", cases=3, seed=0)
    generate_benchmark(root, cases=2, seed=0)
    assert sorted(p.name for p in (root / "images").iterdir()) == ["synth_0000.nii.gz", "synth_0001.nii.gz"]
    assert len(list((root / "totalseg").iterdir())) == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a synthetic benchmark"):
        generate_benchmark(tmp_path / "mine", cases=1)


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rerun_deletes_only_what_the_generator_wrote(tmp_path):
    root = generate_benchmark(tmp_path / "b", cases=3, seed=0, totalseg_folders=True)
    mine = {
        "notes/synth_0001_radiologist.txt": "reading notes",
        "synth_overview.xlsx": "a spreadsheet",
        "images/synth_0002.json": "a sidecar",
        "test_demo/README_mine.txt": "about the demo",
        "totalseg_folders/synth_0002/my_notes.txt": "notes on a dropped case",
    }
    for rel, text in mine.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    generate_benchmark(root, cases=2, seed=0)  # drops synth_0002 and the per-class folders
    for rel, text in mine.items():
        assert (root / rel).read_text() == text, rel
    assert sorted(p.name for p in (root / "images").glob("*.nii.gz")) == [
        "synth_0000.nii.gz",
        "synth_0001.nii.gz",
    ]
    assert not (root / "totalseg_folders" / "synth_0000").exists()
    assert [p.name for p in (root / "totalseg_folders").rglob("*")] == ["synth_0002", "my_notes.txt"]


def test_rerun_moves_an_older_nested_test_demo_to_the_flat_layout(tmp_path):
    root = generate_benchmark(tmp_path / "b", cases=6, seed=0)
    demo = root / "test_demo"
    old = demo / "images"
    old.mkdir()
    for volume in demo.glob("*.nii.gz"):  # how versions before the public layout wrote it
        volume.rename(old / volume.name)
    generate_benchmark(root, cases=6, seed=0)
    assert not old.exists() and len(list(demo.glob("*.nii.gz"))) == 1


def test_an_interrupted_run_is_flagged_and_a_rerun_finishes_it_byte_identically(tmp_path, monkeypatch):
    from ctfm.data import synth
    from ctfm.data.check import check_benchmark

    clean = _tree(generate_benchmark(tmp_path / "clean", cases=4, seed=3))
    root = generate_benchmark(tmp_path / "b", cases=4, seed=0)
    real, calls = synth.render_and_write, []

    def interrupted(job):
        calls.append(job.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(synth, "render_and_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_benchmark(root, cases=4, seed=3)  # another seed: two cases rewritten, two still seed 0
    monkeypatch.setattr(synth, "render_and_write", real)
    (root / "images" / ".synth_0002.nii.gz.x1y2.part.nii.gz").write_bytes(b"half a volume")  # a killed write
    problems = check_benchmark(root).problems
    assert [(p.file, "did not finish" in p.problem) for p in problems] == [("manifest.json", True)]
    generate_benchmark(root, cases=4, seed=3)
    assert _tree(root) == clean
    assert check_benchmark(root).ok
