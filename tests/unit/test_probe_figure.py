"""The progress figure is drawn in a child process while the parent trains; whatever the child cannot draw is
drawn (or fails) in the parent as it would without the child."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ctfm.probe.figure import FigureData, FigureWorker, Selected, progress_figure


def _data(epochs: int = 12) -> FigureData:
    heads = [
        {"name": f"clf_lr_{lr}", "lr": lr, "norm": norm} for norm in ("raw", "std") for lr in (1e-3, 1e-2)
    ]
    rng = np.random.default_rng(0)
    history = pd.DataFrame(
        {
            "epoch": np.repeat(np.arange(1, epochs + 1), len(heads)),
            "head": np.tile(np.arange(len(heads)), epochs),
            "val_loss": rng.random(epochs * len(heads)),
            "val_balanced_acc": rng.random(epochs * len(heads)),
            "val_auroc": rng.random(epochs * len(heads)),
        }
    )
    return FigureData(heads, history, {"val_auroc": Selected(2, 5), "val_loss": Selected(0, 7)}, epochs)


def test_the_child_draws_the_figures_it_is_handed(tmp_path: Path) -> None:
    with FigureWorker() as figures:
        assert figures._proc is not None
        figures.draw(_data(), tmp_path / "a" / "progress.png")
        figures.draw(_data(5), tmp_path / "b" / "progress.png")
        figures.finish()
        for run in ("a", "b"):  # drawn by the child, identical to one drawn here
            progress_figure(_data(12 if run == "a" else 5), tmp_path / run / "here.png")
            ours, theirs = (np.asarray(Image.open(tmp_path / run / f)) for f in ("progress.png", "here.png"))
            assert ours.shape == theirs.shape and np.array_equal(ours, theirs)
        child = figures._proc
    assert child.returncode is not None  # ended with the with-block


def test_a_figure_the_child_cannot_draw_fails_here_with_its_own_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run folder should be")
    with FigureWorker() as figures:
        figures.draw(_data(), blocker / "progress.png")
        with pytest.raises(OSError):
            figures.finish()


def test_a_worker_with_nothing_to_draw_is_ended_with_its_block() -> None:
    with FigureWorker() as figures:
        child = figures._proc
    assert child is not None and child.poll() is not None  # killed, not left importing in the background
