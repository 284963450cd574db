"""Which heads ``ctfm eval`` scores: every checkpoint of the finished probe runs under a ``ctfm probe --out``
folder, found through :mod:`ctfm.probe.layout` only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ctfm.core.errors import DataError
from ctfm.probe.layout import TASK_FOLDERS, DiseaseLayout, list_diseases


@dataclass(frozen=True)
class HeadRef:
    """One checkpoint to evaluate, as found through :mod:`ctfm.probe.layout`."""

    path: Path
    model_dir: str
    task: str
    disease: str
    strategy: str
    tag: str = ""
    split_column: str = "split"  # the column whose train/val the head was trained and selected on


@dataclass
class Checkpoints:
    """What a probe ``--out`` folder holds: its heads, and the diseases whose heads could not be listed."""

    heads: list[HeadRef]
    problems: list[str]  # one line per broken disease (unreadable summary, missing checkpoint)
    broken: set[tuple[str, str, str]]  # their (model folder, task, disease)

    def only(self, strategies: list[str] | None) -> list[HeadRef]:
        return [h for h in self.heads if not strategies or h.strategy in strategies]


def find_checkpoints(
    runs: Path,
    strategies: list[str] | None = None,
    diseases: list[str] | None = None,
    model: str | None = None,
) -> Checkpoints:
    """Every head of every finished run recorded in the probe summaries under a ``ctfm probe --out``
    folder (optionally only some diseases or one model folder); a broken disease is a problem line and the
    others are still listed. Raises when no head of ``strategies`` (all when None) is found at all."""
    runs = Path(runs)
    if not runs.is_dir():
        raise DataError(f"{runs}: run folder not found; pass the --out folder of `ctfm probe`")
    found = Checkpoints([], [], set())
    for model_dir in sorted(p.name for p in runs.iterdir() if p.is_dir() and model in (None, p.name)):
        for task in TASK_FOLDERS:
            for disease in list_diseases(runs, model_dir, task):
                if diseases is not None and disease not in diseases:
                    continue
                try:
                    found.heads += _disease_heads(DiseaseLayout.of(runs, model_dir, disease, task), model_dir)
                except DataError as exc:
                    found.problems.append(str(exc))
                    found.broken.add((model_dir, task, disease))
    if not found.only(strategies) and not found.problems:
        wanted = f" for strategies {', '.join(strategies)}" if strategies else ""
        raise DataError(f"{runs}: no finished probe checkpoint{wanted}; run `ctfm probe` first")
    return found


def _disease_heads(layout: DiseaseLayout, model_dir: str) -> list[HeadRef]:
    return [
        HeadRef(c.path, model_dir, layout.task, layout.dir.name, c.strategy, c.tag, c.split_column)
        for c in layout.checkpoints()
    ]
