"""`ctfm run` configs are validated up front, each bad key named on its own line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ctfm.benchmark import configs_dir
from ctfm.errors import ConfigError
from ctfm.runconfig import fingerprint, load_run_config


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


BASE = {
    "output": "out",
    "data": {"synth": {"cases": 10}},
    "diseases": ["fatty_liver"],
    "extractors": [{"name": "hu-stats"}],
}


def test_shipped_configs_parse():
    demo = load_run_config(configs_dir() / "demo.yaml")
    assert demo.data.synth is not None and demo.tasks == ["lp", "eao"]
    assert {e.name for e in demo.extractors} == {"hu-stats", "cnn3d"}
    with pytest.raises(ConfigError, match=r"data\.path: folder .* does not exist"):
        load_run_config(configs_dir() / "cvpr26.yaml")


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    cfg = load_run_config(_write(tmp_path, BASE))
    assert cfg.output == tmp_path / "out"
    assert cfg.disease_list() == ["fatty_liver"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extractor": [{"name": "hu-stats"}]}, r"extractor: unknown key \(allowed: output, data"),
        ({"probe": {"lp": {"epoch": 3}}}, r"probe\.lp\.epoch: unknown key"),
        ({"data": {"path": "no/such/folder"}}, r"data\.path: folder .*no/such/folder does not exist"),
        ({"diseases": ["fatty_liver", "gout"]}, r"diseases\[1\]: unknown disease 'gout'"),
        ({"extractors": [{"name": "resnet9000"}]}, r"extractors\[0\]\.name: unknown extractor 'resnet9000'"),
        ({"tasks": ["lp", "seg"]}, r"tasks\[1\]: 'seg' is not one of 'lp', 'eao'"),
        ({"seed": "x"}, r"seed: expected int"),
        ({"data": {}}, r"data: give exactly one of `path`"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(_write(tmp_path, {**BASE, **change}))


def test_missing_required_key_and_several_problems_reported_together(tmp_path):
    cfg = {k: v for k, v in BASE.items() if k != "output"}
    cfg["bogus"] = 1
    with pytest.raises(ConfigError) as info:
        load_run_config(_write(tmp_path, cfg))
    text = str(info.value)
    assert "output: required key is missing" in text and "bogus: unknown key" in text


def test_fingerprint_changes_with_any_setting():
    assert fingerprint({"a": 1}, [2]) == fingerprint({"a": 1}, [2])
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
