"""`ctfm run` configs are validated up front, each bad key named on its own line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ctfm.core.benchmark import configs_dir
from ctfm.core.errors import ConfigError
from ctfm.runconfig import load_run_config


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
        ({"eval": {"strategies": []}}, r"eval\.strategies: give at least one of val_balanced_acc"),
        ({"eval": {"strategies": ["best"]}}, r"eval\.strategies\[0\]: 'best' is not one of"),
        ({"leaderboard": {"metrics": ["auroc", "dice"]}}, r"leaderboard\.metrics\[1\]: 'dice' is not one of"),
        # probe settings fail when the config is read, not after extraction
        ({"probe": {"eao": {"heads": ["transformer"]}}}, r"probe\.eao: --head 'transformer' is not one of"),
        (
            {"probe": {"eao": {"lrs": [1e-3, -1e-4]}}},
            r"probe\.eao: --lrs values must be positive, not -0.0001",
        ),
        ({"probe": {"lp": {"weight_decays": [-1.0]}}}, r"probe\.lp: weight decay .* must be at least 0"),
        ({"probe": {"lp": {"epochs": 0}}}, r"probe\.lp: --epochs must be at least 1"),
        ({"containers": [{"baseline": True, "memory": "lots"}]}, r"containers\[0\]: --memory 'lots'"),
        (
            {"containers": [{"baseline": True, "timeout_per_case": 0}]},
            r"containers\[0\]: --timeout-per-case must be positive, not 0",
        ),
    ],
)
def test_bad_configs_name_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(_write(tmp_path, {**BASE, **change}))


def test_floats_written_without_a_dot_are_floats(tmp_path):
    # YAML 1.1 (PyYAML) reads `1e-3` as the string "1e-3"; a user writing lrs that way means a number
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(BASE) + "probe: {eao: {lrs: [1e-3, 2E-4]}, lp: {lrs: [5e-2]}}\n")
    cfg = load_run_config(path)
    assert cfg.probe.eao.lrs == [1e-3, 2e-4] and cfg.probe.lp.lrs == [5e-2]
    path.write_text(yaml.safe_dump(BASE) + "probe: {eao: {lrs: [fast]}}\n")
    with pytest.raises(ConfigError, match=r"probe\.eao\.lrs\[0\]: expected float, got 'fast'"):
        load_run_config(path)


def test_every_probe_problem_is_reported_at_once(tmp_path):
    probe = {"lp": {"epochs": 0}, "eao": {"heads": ["attn-pool", "transformer"], "lrs": [1e-3, -1.0]}}
    with pytest.raises(ConfigError) as info:
        load_run_config(_write(tmp_path, {**BASE, "probe": probe}))
    lines = str(info.value).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == ["probe.lp", "probe.eao", "probe.eao"]
    assert "--head 'transformer'" in lines[1] and "--lrs values must be positive, not -1" in lines[2]


def test_missing_required_key_and_several_problems_reported_together(tmp_path):
    cfg = {k: v for k, v in BASE.items() if k != "output"}
    cfg["bogus"] = 1
    with pytest.raises(ConfigError) as info:
        load_run_config(_write(tmp_path, cfg))
    text = str(info.value)
    assert "output: required key is missing" in text and "bogus: unknown key" in text


def test_an_incomplete_stage_never_lets_its_dependents_count_as_up_to_date(tmp_path):
    from ctfm.pipeline.stages import RunContext, Stage, StageIncomplete, task_keys

    pipeline = RunContext(load_run_config(_write(tmp_path, BASE)))

    def partial() -> str:
        raise StageIncomplete("2 extracted, 1 failed")

    first = pipeline.run_one(Stage("extract/x", "k", partial))
    again = pipeline.run_one(Stage("extract/x", "k", partial))
    done = pipeline.run_one(Stage("extract/x", "k", lambda: "all extracted"))
    assert len({first, again, done}) == 3 and done == "k"  # dependents rerun until the stage completes
    assert pipeline.run_one(Stage("extract/x", "k", partial)) == "k"  # stamped: up to date from now on
    # a task with a failed view is not probed at all; the others keep their key
    keys = task_keys({"lp": ["a", "b"], "eao": ["c", None]})
    assert list(keys) == ["lp"] and keys["lp"] != task_keys({"lp": ["a", "c"]})["lp"]


def test_short_lp_runs_set_min_epoch_in_the_config(tmp_path):
    """--epochs below --min-epoch is refused up front; the config can lower min_epoch for short runs."""
    with pytest.raises(ConfigError, match=r"probe\.lp: --epochs 4 is below --min-epoch 6"):
        load_run_config(_write(tmp_path, {**BASE, "probe": {"lp": {"epochs": 4}}}))
    cfg = load_run_config(_write(tmp_path, {**BASE, "probe": {"lp": {"epochs": 4, "min_epoch": 2}}}))
    assert cfg.probe.lp.min_epoch == 2 and cfg.probes["lp"].train.min_epoch == 2
