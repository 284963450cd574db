"""The CLI and ``ctfm run`` take their shared defaults from one place (``configs/benchmark.yaml``)."""

from __future__ import annotations

from typing import Any

from typer.main import get_command

from ctfm.cli.main import app
from ctfm.core.benchmark import load_benchmark
from ctfm.evaluate.stage import EvalOptions, LeaderboardOptions
from ctfm.extract.containers import RunSettings
from ctfm.runconfig import ContainerSpec, section_options


def option_default(command: str, name: str) -> Any:
    cmd = get_command(app).commands[command]  # type: ignore[attr-defined]
    return next(p.default for p in cmd.params if p.name == name)


def test_container_limits_are_the_same_from_the_cli_and_a_run_config() -> None:
    limits = load_benchmark().section("container_limits")
    for command in ("extract", "check-container"):
        assert option_default(command, "memory") == RunSettings().memory == ContainerSpec().memory
        assert option_default(command, "memory") == limits["memory"]
        timeout = option_default(command, "timeout_per_case")
        assert timeout == RunSettings().timeout_per_case == ContainerSpec().timeout_per_case
        assert timeout == limits["timeout_per_case_s"]
        assert option_default(command, "scratch") == RunSettings().scratch == limits["scratch"]


def test_scoring_defaults_are_the_same_from_the_cli_and_a_run_config() -> None:
    bench = load_benchmark()
    assert (
        option_default("eval", "bootstrap")
        == section_options(EvalOptions).bootstrap
        == bench.default("evaluation", "bootstrap")
    )
    assert (
        section_options(EvalOptions).split == bench.default("evaluation", "split") == "val"
    )  # public labels: train/val
    assert (
        option_default("leaderboard", "bootstrap")
        == section_options(LeaderboardOptions).bootstrap
        == bench.default("ranking", "bootstrap")
    )


def test_probe_help_states_the_protocol_the_command_follows() -> None:
    """``ctfm probe lp|eao --help`` lists the configured protocol: what runs when an option is not given."""
    probe = get_command(app).commands["probe"]  # type: ignore[attr-defined]
    for command, section in (("lp", "linear_probe"), ("eao", "eao")):
        conf = load_benchmark().section(section)
        text = " ".join(probe.commands[command].help.split())
        assert f"Defaults ({section} in configs/benchmark.yaml)" in text
        assert f"batch {conf['batch_size']}, {conf['epochs']} epochs" in text
        assert f"patience {conf['patience']} from epoch {conf['min_epoch']}" in text
        assert f"{len(conf['lrs'])} lrs" in text
    assert "norms raw, std" in " ".join(probe.commands["lp"].help.split())
