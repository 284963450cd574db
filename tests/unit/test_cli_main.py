"""The entry point's Ctrl-C line: only commands that resume promise a resume."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import typer

from ctfm.cli import main as cli_main


@pytest.mark.parametrize(
    ("argv", "resumes"),
    [
        (["extract", "--store", "s"], True),
        (["probe", "lp", "--store", "s"], True),
        (["data", "synth", "--out", "d"], True),
        (["run", "configs/demo.yaml"], True),
        (["eval", "--store", "s"], False),
        (["leaderboard", "--results", "r"], False),
        (["check-container", "img:1"], False),
        (["data", "check", "d"], False),
    ],
)
def test_only_resuming_commands_promise_a_resume(argv: list[str], resumes: bool) -> None:
    assert ("resume" in cli_main._interrupted_line(argv)) is resumes


def _ctfm_eval_running(monkeypatch: pytest.MonkeyPatch, body) -> None:
    """Make ``ctfm eval`` run ``body`` (a second command keeps typer from collapsing the group)."""
    app = typer.Typer()
    app.command("eval")(body)
    app.command("other")(lambda: None)
    monkeypatch.setattr(cli_main, "app", app)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main replaces it: restore after


def test_ctrl_c_exits_130_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    _ctfm_eval_running(monkeypatch, interrupted)
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["eval"])
    assert exit_info.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: interrupted: no file was left half-written; run the same command again to start over"
    ]


def test_a_library_warning_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def overflowing() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            np.float32(3e38) * np.float32(10)

    _ctfm_eval_running(monkeypatch, overflowing)
    cli_main.main(["eval"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: RuntimeWarning: overflow encountered in scalar multiply"]
