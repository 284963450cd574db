"""`ctfm data download` without the network: an offline Hugging Face cache built in the test, and a hub that
cannot be reached (the real hub is replaced by a closed local port, because no network is reachable here)."""

from __future__ import annotations

import huggingface_hub.constants
import pytest

from ctfm.core.errors import ConfigError, OfflineError
from ctfm.data.download import download_benchmark
from data_fixtures import FILES, UNREACHABLE_HUB, build_offline_cache


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_offline_cache_is_materialised_into_dest(tmp_path, offline):
    cache = build_offline_cache(tmp_path / "cache")
    result = download_benchmark(tmp_path / "dest", cache_dir=cache)
    assert result.root == tmp_path / "dest" / "AMOS-clf-tr-val"
    assert (result.root / "labels" / "gallstone.csv").read_bytes() == FILES[
        "AMOS-clf-tr-val/labels/gallstone.csv"
    ]
    assert (result.root / "images" / "A_001.nii.gz").is_file()
    assert not (tmp_path / "dest" / "README.md").exists()  # outside the config's include patterns
    assert (result.files, result.linked) == (2, 2)
    again = download_benchmark(tmp_path / "dest", cache_dir=cache)
    assert (again.linked, again.skipped) == (0, 2)  # resumable: finished files are not fetched again


def test_include_patterns_select_files(tmp_path, offline):
    cache = build_offline_cache(tmp_path / "cache")
    result = download_benchmark(tmp_path / "dest", include=["*/labels/*"], cache_dir=cache)
    assert result.files == 1
    assert not (result.root / "images").exists()
    with pytest.raises(ConfigError, match="no file"):
        download_benchmark(tmp_path / "dest2", include=["nothing/*"], cache_dir=cache)


def test_offline_without_cache_is_one_line_offline_error(tmp_path, offline):
    with pytest.raises(OfflineError) as info:
        download_benchmark(tmp_path / "dest", cache_dir=tmp_path / "empty")
    assert "\n" not in str(info.value) and "HF_HUB_OFFLINE is set" in str(info.value)


def test_unreachable_hub_is_one_line_offline_error(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(OfflineError) as info:
        download_benchmark(tmp_path / "dest", cache_dir=tmp_path / "empty", endpoint=UNREACHABLE_HUB)
    assert "\n" not in str(info.value) and "cannot reach" in str(info.value)
    assert not (tmp_path / "dest").exists()
