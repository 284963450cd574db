"""Where probe runs write their outputs; ``ctfm eval`` finds checkpoints through this module only.

Layout::

    <out>/<model>/<disease>/            linear probing (task 1)
    <out>/<model>/eao/<disease>/        embedding aggregation optimisation (task 2)
        summary.json                    every run's selections, mean/std over runs, missing cases, options
        DONE                            written last: the disease is finished (skipped unless --force)
        [<run tag>/]                    only when there are several runs (folds, seeds, few-shot tries)
            checkpoints/<strategy>.pt   what ``ctfm eval`` reads
            reference_checkpoints/      the same heads as the reference trainers save them (*.pth)
            val_report.csv  grid_report.csv  history.csv  progress.png

A single run (one split, one seed, no few-shot) writes its files directly in the disease folder (tag ``""``).

Example:
    >>> layout = DiseaseLayout.of(Path("probes"), "my-model", "fatty_liver")
    >>> layout.run("seed1").checkpoint("val_auroc").relative_to("probes").as_posix()
    'my-model/fatty_liver/seed1/checkpoints/val_auroc.pt'
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ctfm.core.errors import DataError
from ctfm.store import sanitize_name

TASK_FOLDERS = {"lp": "", "eao": "eao"}


@dataclass(frozen=True)
class RunLayout:
    """The files of one training run."""

    dir: Path

    @property
    def checkpoints_dir(self) -> Path:
        return self.dir / "checkpoints"

    def checkpoint(self, strategy: str) -> Path:
        return self.checkpoints_dir / f"{strategy}.pt"

    @property
    def reference_dir(self) -> Path:
        """The same heads in the reference trainers' format (:mod:`ctfm.probe.reference`): the folder to give
        the reference inference scripts as ``--ckpt_dir``."""
        return self.dir / "reference_checkpoints"

    @property
    def val_report(self) -> Path:
        return self.dir / "val_report.csv"

    def reference_checkpoint(self, strategy: str) -> str:
        """The name of the reference-format file saved for ``strategy`` (``val_report.csv``'s ``checkpoint``
        column), or "" where the run saved none (EAO strategies other than the reference's, older runs)."""
        try:
            with self.val_report.open(newline="") as fh:
                rows = {row[""]: row for row in csv.DictReader(fh) if "" in row}
        except (OSError, csv.Error):
            return ""
        return Path(rows.get(strategy, {}).get("checkpoint") or "").name

    @property
    def grid_report(self) -> Path:
        return self.dir / "grid_report.csv"

    @property
    def history(self) -> Path:
        return self.dir / "history.csv"

    @property
    def progress(self) -> Path:
        return self.dir / "progress.png"


@dataclass(frozen=True)
class SavedCheckpoint:
    """One strategy's checkpoint of one finished run, and the split column the run trained and selected on."""

    path: Path
    strategy: str
    tag: str = ""
    split_column: str = "split"


@dataclass(frozen=True)
class DiseaseLayout:
    """One disease's probe folder for one model and task."""

    dir: Path
    task: str = "lp"

    @classmethod
    def of(cls, out: Path, model: str, disease: str, task: str = "lp") -> DiseaseLayout:
        if task not in TASK_FOLDERS:
            raise DataError(f"unknown probe task {task!r}; known: {', '.join(TASK_FOLDERS)}")
        base = Path(out) / sanitize_name(model)
        if TASK_FOLDERS[task]:
            base = base / TASK_FOLDERS[task]
        return cls(base / disease, task)

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    @property
    def done(self) -> Path:
        return self.dir / "DONE"

    def is_done(self) -> bool:
        return self.done.is_file()

    def run(self, tag: str = "") -> RunLayout:
        return RunLayout(self.dir / tag if tag else self.dir)

    def runs(self) -> list[dict]:
        """The runs recorded in ``summary.json``: tag (``""`` for a single run), split column, and the
        selections (strategy -> selected head) whose checkpoints the run wrote."""
        try:
            runs = json.loads(self.summary.read_text())["runs"]
            runs = [
                {"split_column": "split", **run, "tag": run["tag"], "selections": run["selections"]}
                for run in runs
            ]
        except FileNotFoundError:
            raise DataError(f"{self.summary}: no probe summary; run `ctfm probe {self.task}` first") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{self.summary}: unreadable ({exc!r}); rerun the probe with --force") from exc
        return runs

    def run_tags(self) -> list[str]:
        return [run["tag"] for run in self.runs()]

    def checkpoints(self) -> list[SavedCheckpoint]:
        """Every checkpoint the finished runs of this disease wrote: one per run and strategy."""
        if not self.is_done():
            raise DataError(f"{self.dir}: the probe did not finish (no DONE); rerun `ctfm probe {self.task}`")
        found = [
            SavedCheckpoint(
                self.run(run["tag"]).checkpoint(strategy), strategy, run["tag"], run["split_column"]
            )
            for run in self.runs()
            for strategy in run["selections"]
        ]
        absent = [str(c.path) for c in found if not c.path.is_file()]
        if absent:
            raise DataError(f"checkpoint missing: {absent[0]}; rerun the probe with --force")
        return found


def list_diseases(out: Path, model: str, task: str = "lp") -> list[str]:
    """Diseases with a finished probe for this model and task."""
    base = DiseaseLayout.of(out, model, "_", task).dir.parent
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "DONE").is_file())
