"""Preprocessing (MONAI), the extractor registry and the built-in extractors."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ctfm.core.errors import ConfigError, DataError
from ctfm.extract import extractors as registry
from ctfm.extract.extractors import available, get_extractor, hu_stats
from ctfm.extract.inputs import resolve_mask_dir, resolve_view
from ctfm.extract.preprocess import Preprocessor, mask_bbox, resolve_spec
from extract_fixtures import SHAPE, affine, make_case

SMALL = {"spacing_mm": [2.0, 2.0, 2.0], "roi_size": [16, 16, 16], "full_size": [32, 32, 32], "crop": "fixed"}


def test_mask_centred_crop_contains_planted_finding(tmp_path: Path) -> None:
    finding = (32, 8, 14)  # near the organ's edge, far from the image centre
    img, mask = make_case(tmp_path, "c0", finding=finding, mask_dir=tmp_path / "fg")
    prep = Preprocessor(resolve_spec(SMALL), with_mask=True)(img, mask)
    assert prep.image.shape == (16, 16, 16) and prep.mask.shape == (16, 16, 16)
    # HU 900 scaled from the [-1000, 1000] window to [0, 1] is 0.95; blurred by resampling, still bright
    assert prep.image.max() > 0.8
    lo, hi = mask_bbox(prep.mask)
    bright = np.argwhere(prep.image > 0.8)
    assert ((bright >= lo) & (bright < hi)).all()  # the finding lies inside the organ, inside the crop
    assert np.allclose((lo + hi) / 2, np.array([8, 8, 8]), atol=1.5)  # organ centred in the crop
    assert prep.spacing == pytest.approx((2.0, 2.0, 2.0))
    world = (affine() @ np.array([*finding, 1.0]))[:3]  # the finding in world mm
    box = np.array(prep.crop_box_world).reshape(2, 3)
    assert ((world >= box.min(axis=0)) & (world <= box.max(axis=0))).all()


def test_crop_past_the_border_pads_with_air(tmp_path: Path) -> None:
    img, mask = make_case(tmp_path, "c0", mask_dir=tmp_path / "fg")
    spec = resolve_spec({**SMALL, "roi_size": [48, 48, 48]})
    prep = Preprocessor(spec, with_mask=True)(img, mask)
    assert prep.image.shape == (48, 48, 48)
    assert prep.image[0, 0, 0] == pytest.approx(0.0)  # air in [0, 1] scaling
    start = np.array(prep.crop_box_voxel[:3])
    assert (start < 0).any()  # the box left the image: recorded as such, not shifted
    full = Preprocessor(resolve_spec(SMALL), with_mask=False)(img)
    assert full.image.shape == (32, 32, 32) and full.mask is None


def test_preprocess_errors_name_the_problem(tmp_path: Path) -> None:
    img, mask = make_case(tmp_path, "c0", mask_dir=tmp_path / "fg")
    pre = Preprocessor(resolve_spec(SMALL), with_mask=True)
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), affine()), empty)
    with pytest.raises(DataError, match="empty mask"):
        pre(img, empty)
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), affine()), other)
    with pytest.raises(DataError, match=r"mask grid differs from its image's: shape \(10, 10, 10\)"):
        pre(img, other)
    shifted = tmp_path / "shifted.nii.gz"  # same shape, origin 5 mm away: both origins are named
    moved = affine()
    moved[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.uint8), moved), shifted)
    origin = tuple(round(float(v), 3) for v in moved[:3, 3])
    with pytest.raises(DataError, match=re.escape(f"origin {origin}")):
        pre(img, shifted)
    holed = tmp_path / "nan.nii.gz"
    data = np.asanyarray(nib.load(img).dataobj).astype(np.float32)
    data[:2, :2, :2] = np.nan
    nib.save(nib.Nifti1Image(data, affine()), holed)
    with pytest.raises(DataError, match=r"8 NaN or infinite voxel\(s\)"):
        pre(holed, mask)
    tiny = tmp_path / "tiny.nii.gz"
    nib.save(nib.Nifti1Image(data[..., :4] * 0, np.diag([1e-6, 1e-6, 1e-6, 1.0])), tiny)
    with pytest.raises(DataError, match=r"voxel size .* is outside 0\.01\.\.100 mm"):
        Preprocessor(resolve_spec(SMALL), with_mask=False)(tiny)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(img.read_bytes()[:200])
    with pytest.raises(DataError, match="cannot read"):
        pre(corrupt, mask)
    with pytest.raises(ConfigError, match="crop"):
        resolve_spec({"crop": "sometimes"})


def test_hu_stats_numpy_path_equals_monai_path(tmp_path: Path) -> None:
    img, mask = make_case(tmp_path, "c0", organ_hu=55, finding=(28, 12, 10), mask_dir=tmp_path / "fg")
    ex = get_extractor("hu-stats")
    ex.setup()
    pre = Preprocessor(resolve_spec(ex.preprocess), with_mask=True)(img, mask)
    for task in ("lp", "eao"):
        in_process = ex.extract(pre.image[None], pre.mask[None], pre.spacing, task)[0]
        standalone = hu_stats.from_files(img, mask, task)
        np.testing.assert_array_equal(in_process, standalone)
    assert in_process.shape == (len(hu_stats.GRID_FEATURE_NAMES), *hu_stats.GRID)


def test_hu_stats_features_mean_what_they_say() -> None:
    vol = np.full((30, 30, 30), -1000.0, np.float32)
    vol[5:25, 5:25, 5:25] = 30
    mask = np.zeros(vol.shape, bool)
    mask[10:20, 10:20, 10:16] = True
    names = list(hu_stats.FEATURE_NAMES)
    low, high = vol.copy(), vol.copy()
    low[mask], high[mask] = -20, 60
    f_low = hu_stats.features(low, mask, (1.0, 2.0, 3.0))
    f_high = hu_stats.features(high, mask, (1.0, 2.0, 3.0))
    assert f_low[names.index("mean")] == pytest.approx(-20) and f_high[names.index("mean")] == pytest.approx(
        60
    )
    assert f_low[names.index("volume_ml")] == pytest.approx(600 * 6 / 1000)
    assert f_low[names.index("extent_z_mm")] == pytest.approx(18.0)
    assert f_low[names.index("fat_frac")] == 1.0 and f_high[names.index("fat_frac")] == 0.0
    assert f_low[: len(hu_stats.HIST_EDGES) - 1].sum() == pytest.approx(1.0)
    body = hu_stats.features(low, None, (1.0, 1.0, 1.0))  # whole-scan view: the body
    assert body[names.index("volume_ml")] == pytest.approx(20**3 / 1000)
    grid = hu_stats.grid_features(high, mask, (1.0, 1.0, 1.0), grid=(2, 2, 2))
    assert grid.shape == (len(hu_stats.GRID_FEATURE_NAMES), 2, 2, 2)
    np.testing.assert_allclose(grid[2], 60.0)
    with pytest.raises(ValueError, match="empty mask"):
        hu_stats.features(vol, np.zeros(vol.shape, bool), (1.0, 1.0, 1.0))


def test_hu_stats_low_memory_statistics_equal_plain_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunked float64 moments and in-place percentiles give numpy's float64 answers, across chunk edges."""
    monkeypatch.setattr(hu_stats, "_CHUNK", 1000)  # many chunks, one of them partial
    rng = np.random.default_rng(3)
    vals = rng.normal(40, 300, 12_345).astype(np.float32)  # some outside the HU window
    clipped = np.clip(vals.astype(np.float64), *hu_stats.HU_WINDOW)
    names = list(hu_stats.FEATURE_NAMES)
    vol = vals.reshape(5, 2469, 1)
    got = hu_stats.features(vol, np.ones(vol.shape, bool), (1.0, 1.0, 1.0))
    centred = clipped - clipped.mean()
    want = {
        "mean": clipped.mean(),
        "std": clipped.std(),
        "min": clipped.min(),
        "max": clipped.max(),
        "skewness": (centred**3).mean() / clipped.std() ** 3,
        "kurtosis": (centred**4).mean() / clipped.std() ** 4 - 3,
        "rms": np.sqrt((clipped**2).mean()),
        "mad": np.abs(centred).mean(),
        "fat_frac": (clipped < 0).mean(),
    }
    for name, value in want.items():
        assert got[names.index(name)] == pytest.approx(value, rel=1e-6), name
    for p, value in zip(hu_stats.PERCENTILES, np.percentile(clipped, hu_stats.PERCENTILES), strict=True):
        assert got[names.index(f"p{p}")] == np.float32(value), p
    for n in (1, 2, 3, 10, 101):
        sample = rng.normal(0, 1, n).astype(np.float32)
        q = (0, 1, 25, 50, 75, 99, 100)
        np.testing.assert_array_equal(
            hu_stats._percentiles(sample.copy(), q), np.percentile(sample.astype(float), q)
        )


def test_hu_stats_eao_tokens_fit_the_reference_head_and_mean_what_they_say() -> None:
    """D divisible by the reference EAO head's 4 attention heads; each block's values are numpy's on its voxels."""
    assert len(hu_stats.GRID_FEATURE_NAMES) % 4 == 0
    rng = np.random.default_rng(5)
    vol = rng.normal(30, 400, (12, 10, 9)).astype(np.float32)
    mask = np.zeros(vol.shape, bool)
    mask[2:10, 1:9, 3:9] = rng.random((8, 8, 6)) < 0.7
    grid = hu_stats.grid_features(vol, mask, (1.0, 1.0, 2.0), grid=(2, 2, 3))
    names = list(hu_stats.GRID_FEATURE_NAMES)
    spans = [
        np.flatnonzero(mask.any(axis=tuple({0, 1, 2} - {a}))) for a in range(3)
    ]  # the mask's bounding box
    edges = [np.array_split(np.arange(ix[0], ix[-1] + 1), n) for ix, n in zip(spans, (2, 2, 3), strict=True)]
    for i, xs in enumerate(edges[0]):
        for j, ys in enumerate(edges[1]):
            for k, zs in enumerate(edges[2]):
                sub = mask[np.ix_(xs, ys, zs)]
                vals = np.clip(vol[np.ix_(xs, ys, zs)][sub].astype(np.float64), -1000, 1000)
                want = {
                    "mask_frac": sub.mean(),
                    "log_volume_ml": np.log1p(vals.size * 2.0 / 1000),
                    "mean": vals.mean(),
                    "std": vals.std(),
                    "min": vals.min(),
                    "max": vals.max(),
                    "fat_frac": (vals < 0).mean(),
                    **{f"p{q}": np.percentile(vals, q) for q in (10, 25, 50, 75, 90)},
                }
                got = {name: grid[names.index(name), i, j, k] for name in want}
                assert got == pytest.approx(want, rel=1e-5, abs=1e-3), (i, j, k)


def test_cnn3d_seeded_weights_and_outputs(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((2, 32, 32, 32), dtype=np.float32)
    a, b = get_extractor("cnn3d"), get_extractor("cnn3d")
    a.setup(seed=0)
    b.setup(seed=0)
    lp = a.extract(x, None, (3.0, 3.0, 3.0), "lp")
    np.testing.assert_array_equal(lp[0], b.extract(x, None, (3.0, 3.0, 3.0), "lp")[0])
    assert lp[0].shape == (2 * sum((16, 32, 64, 128)),) and np.isfinite(lp[0]).all()
    assert not np.allclose(lp[0], lp[1])
    eao = a.extract(x, None, (3.0, 3.0, 3.0), "eao")
    assert eao[0].shape == (128, 2, 2, 2)
    weights = tmp_path / "w.pt"
    state = {k: torch.randn_like(v) for k, v in a.model.state_dict().items()}
    torch.save(state, weights)
    c = get_extractor("cnn3d")
    c.setup(weights=weights)
    assert not np.allclose(c.extract(x, None, (3.0,) * 3, "lp")[0], lp[0])
    bad = tmp_path / "bad.pt"
    torch.save({"nope": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="state_dict"):
        get_extractor("cnn3d").setup(weights=bad)


class _Plugin:
    name, version, preprocess = "plug", "0", {}

    def setup(self, device="cpu", weights=None, seed=0):
        pass

    def extract(self, images, masks, spacing, task):
        return [np.zeros(3, np.float32) for _ in images]


class _EntryPoint:
    def __init__(self, name: str, obj: object) -> None:
        self.name, self._obj = name, obj

    def load(self) -> object:
        return self._obj


def test_registry_builtins_and_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"hu-stats", "cnn3d"} <= set(available())
    with pytest.raises(ConfigError, match="unknown extractor"):
        get_extractor("nope")
    monkeypatch.setattr(registry, "entry_points", lambda group: [_EntryPoint("plug", _Plugin)])
    assert "plug" in available()
    assert get_extractor("plug").name == "plug"
    monkeypatch.setattr(registry, "entry_points", lambda group: [_EntryPoint("half", object)])
    with pytest.raises(ConfigError, match="lacks"):
        get_extractor("half")


def test_mask_folder_and_view_resolution(tmp_path: Path) -> None:
    root = tmp_path / "fg_masks"
    (root / "fatty_liver").mkdir(parents=True)
    (root / "splenomegaly").mkdir()
    assert resolve_mask_dir(root, "fatty_liver") == root / "fatty_liver"
    assert resolve_mask_dir(root / "fatty_liver", "fatty_liver") == root / "fatty_liver"
    with pytest.raises(DataError, match="gallstone"):
        resolve_mask_dir(root, "gallstone")
    assert resolve_view(None, None) == ("full", None)
    assert resolve_view(root, "splenomegaly") == ("splenomegaly", root / "splenomegaly")
    assert resolve_view(root / "fatty_liver", None)[0] == "fatty_liver"
    with pytest.raises(ConfigError, match="whole-scan"):
        resolve_view(root, "ascites")
    with pytest.raises(ConfigError, match="--masks"):
        resolve_view(None, "fatty_liver")


def test_hu_stats_runs_standalone_without_torch_or_ctfm(tmp_path: Path) -> None:
    """The baseline container runs hu_stats.py as a lone file with numpy, nibabel and h5py only."""
    import subprocess
    import sys

    import h5py

    img, mask = make_case(tmp_path / "in", "c0", mask_dir=tmp_path / "in" / "fg_masks")
    out = tmp_path / "out"
    script = (
        "import runpy, sys\n"
        f"ns = runpy.run_path({str(Path(hu_stats.__file__))!r}, run_name='container')\n"
        f"code = ns['main'](['--task', 'eao', '--input', {str(img.parent)!r}, '--output', {str(out)!r},"
        f" '--masks', {str(mask.parent)!r}])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai', 'ctfm', 'pandas'))\n"
        "print(code, heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.stdout.strip() == "0 []", proc.stdout + proc.stderr
    with h5py.File(out / "c0.h5", "r") as fh:
        np.testing.assert_array_equal(fh["y_hat"][()], hu_stats.from_files(img, mask, "eao"))


def test_tiny_organ_survives_coarse_resampling(tmp_path: Path) -> None:
    img, _ = make_case(tmp_path, "c0")
    tiny = tmp_path / "tiny.nii.gz"
    one = np.zeros(SHAPE, np.uint8)
    one[30, 10, 12] = 1  # a single 2x2x4 mm voxel, far smaller than the 6 mm target grid
    nib.save(nib.Nifti1Image(one, affine()), tiny)
    spec = resolve_spec({**SMALL, "spacing_mm": [6.0, 6.0, 6.0], "roi_size": [8, 8, 8]})
    prep = Preprocessor(spec, with_mask=True)(img, tiny)  # no "empty mask" failure
    world = (affine() @ np.array([30, 10, 12, 1.0]))[:3]
    box = np.array(prep.crop_box_world).reshape(2, 3)  # first and last voxel centres of the crop
    assert np.abs(box.mean(axis=0) - world).max() <= 6.0  # centred on the organ within one target voxel


def test_local_and_container_runs_select_cases_alike(tmp_path: Path) -> None:
    from ctfm.extract.containers import collect_inputs
    from ctfm.extract.inputs import read_case_list, select_cases

    for case in ("case_0", "case_1", "case_2"):
        make_case(tmp_path, case, mask_dir=tmp_path / "masks" if case != "case_1" else None)
    images = tmp_path / "images"
    wanted = read_case_list("case_2.nii.gz, case_0,")  # with or without the suffix, in any order
    assert [c for c, _ in select_cases(images, wanted)[0]] == ["case_0", "case_2"]
    inputs, no_mask, refused = collect_inputs(images, tmp_path / "masks", [*wanted, "case_1"])
    assert [i.case for i in inputs] == ["case_0", "case_2"] and list(no_mask) == ["case_1"] and not refused
    assert "ctfm masks" in no_mask["case_1"]
    with pytest.raises(DataError, match="case_9"):
        select_cases(images, ["case_9"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \.nii\.gz volumes"):
        select_cases(tmp_path / "empty")
    import gzip

    (images / "case_0.nii").write_bytes(gzip.decompress((images / "case_0.nii.gz").read_bytes()))
    with pytest.raises(DataError, match=r"case_0\.nii and case_0\.nii\.gz are both case 'case_0'; keep one"):
        select_cases(images)  # which volume is meant cannot be known


def test_baseline_image_recipe_ships_inside_the_package():
    """An installed wheel builds the baseline image: everything the build script reads lies in the package."""
    import ctfm
    from ctfm.extract.images import BUILD_SCRIPT

    package = Path(ctfm.__file__).resolve().parent
    script = BUILD_SCRIPT.read_text()
    used = re.findall(r'"\$HERE/([^"]+)"', script)
    assert {"Dockerfile.baseline", "extract_feat_LP.sh", "extract_feat_EAO.sh"} <= {
        Path(u).name for u in used
    }
    for rel in used:
        path = (BUILD_SCRIPT.parent / rel).resolve()
        assert path.is_file() and package in path.parents, rel
    assert not re.search(r"\b(src|scripts|docker)/", script)  # nothing found in a checkout's folders


def test_cnn3d_refuses_an_unknown_task() -> None:
    from ctfm.extract.extractors.cnn3d import Cnn3dExtractor

    with pytest.raises(ValueError, match="unknown task 'lpp'"):
        Cnn3dExtractor().extract(np.zeros((1, 8, 8, 8), np.float32), None, (3.0, 3.0, 3.0), "lpp")


def test_container_run_options_are_checked_when_built_and_when_changed(tmp_path: Path) -> None:
    from dataclasses import replace

    from ctfm.extract.containers import ContainerRunOptions, RunSettings

    with pytest.raises(ConfigError, match=r"--containers DIR .* or --image TAG"):
        ContainerRunOptions(tmp_path / "s", tmp_path / "images")
    options = ContainerRunOptions(str(tmp_path / "s"), tmp_path / "images", tags=["team:1"], cases=["a"])
    assert options.store == tmp_path / "s" and options.tags == ("team:1",) and options.cases == ("a",)
    assert options.settings == RunSettings() and options.view == "full"
    for view, masks in (("liver_cyst", None), ("full", tmp_path / "masks")):
        with pytest.raises(ConfigError, match="an ROI view needs its mask folder"):
            replace(options, view=view, masks=masks)
    roi = replace(options, view="liver_cyst", masks=Path("masks"))
    assert roi.resolved().masks == Path("masks").resolve() and roi.resolved().images.is_absolute()
