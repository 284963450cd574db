"""The stage machinery of ``ctfm run``: a stage, its fingerprint stamp, and the context that runs stages.

Each unit of work is a :class:`Stage` with a key: a fingerprint of its settings and of the keys of the stages it
reads. A stage's key is stamped under ``<output>/.ctfm/stages/`` once it finishes, so a rerun skips every stage
whose key is unchanged (:meth:`RunContext.run_one`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import CtfmError
from ctfm.core.fsutil import write_text_atomic
from ctfm.core.hashing import digest
from ctfm.core.progress import NO_PROGRESS, Progress
from ctfm.runconfig import RunConfig

logger = logging.getLogger(__name__)


class StageIncomplete(CtfmError):
    """A stage finished what it could; some items failed and a rerun will retry them."""


@dataclass
class Stage:
    """One resumable unit of work: ``run()`` does it (redoing only what changed) and returns a short summary."""

    name: str
    key: str
    run: Callable[[], str]


@dataclass
class StageOutcome:
    name: str
    status: str  # done | up-to-date | incomplete | skipped | failed
    seconds: float = 0.0
    detail: str = ""


@dataclass
class RunResult:
    output: Path
    outcomes: list[StageOutcome] = field(default_factory=list)
    leaderboards: dict[str, Path] = field(default_factory=dict)  # task -> leaderboard folder

    @property
    def failed(self) -> list[StageOutcome]:
        """Stages that failed or left items to retry."""
        return [o for o in self.outcomes if o.status in ("failed", "incomplete")]


class StageStamps:
    """The record of finished stages, one small JSON file per stage, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root / ".ctfm" / "stages"

    def _path(self, name: str) -> Path:
        return self.root / (name.replace("/", "__") + ".json")

    def key(self, name: str) -> str | None:
        path = self._path(name)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text()).get("key")
        except (OSError, json.JSONDecodeError):
            return None

    def mark(self, name: str, key: str, detail: str) -> None:
        stamp = {
            "stage": name,
            "key": key,
            "detail": detail,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_text_atomic(self._path(name), json.dumps(stamp, indent=1) + "\n")


class RunContext:
    """One run's settings, folders and record, and the driver every stage goes through."""

    def __init__(self, cfg: RunConfig, progress: Progress = NO_PROGRESS) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output)
        self.progress = progress
        self.stamps = StageStamps(self.out)
        self.result = RunResult(self.out)
        self.diseases = cfg.disease_list()
        bench = load_benchmark()
        self.roi = [d for d in self.diseases if bench.is_roi(d)]
        self.views = sorted({bench.view_of(d) for d in self.diseases})
        self.baseline: str | None = None  # the baseline container's tag, once built

    @property
    def data_root(self) -> Path:
        return self.cfg.data.path if self.cfg.data.path is not None else self.out / "data"

    @property
    def store_root(self) -> Path:
        return self.out / "store"

    @property
    def masks_root(self) -> Path:
        return self.out / "masks"

    def run_one(self, stage: Stage) -> str | None:
        """Run ``stage`` unless its stamp says it is up to date; the key its dependents build on, or None.

        A stage that raises :class:`StageIncomplete` did useful work but left items to retry: it is not stamped,
        its dependents run on what exists under a key of this run only (so they are redone, never taken as up
        to date, until the stage completes), and a rerun resumes it. Any other user error fails the stage and
        the stages that depend on it are skipped (None); independent ones still run.
        """
        done_key = self.stamps.key(stage.name)
        if done_key == stage.key:
            self.result.outcomes.append(StageOutcome(stage.name, "up-to-date"))
            logger.info("%s: up to date", stage.name)
            return stage.key
        logger.info("%s%s", stage.name, " (settings changed: redoing)" if done_key else "")
        start = time.perf_counter()
        try:
            detail = stage.run()
        except StageIncomplete as exc:
            self._record(stage.name, "incomplete", start, str(exc), logging.WARNING)
            return digest([stage.key, "incomplete", time.time_ns()])
        except CtfmError as exc:
            self._record(stage.name, "failed", start, str(exc), logging.ERROR)
            return None
        self.stamps.mark(stage.name, stage.key, detail)
        self._record(stage.name, "done", start, detail, logging.INFO)
        return stage.key

    def _record(self, name: str, status: str, start: float, detail: str, level: int) -> None:
        seconds = time.perf_counter() - start
        self.result.outcomes.append(StageOutcome(name, status, seconds, detail))
        text = f"{status}: {detail}" if level > logging.INFO else detail
        logger.log(level, "  %s (%.1f s)", text, seconds)


def task_keys(stage_keys: dict[str, list[str | None]]) -> dict[str, str]:
    """One embeddings key per task from its views' stage keys; a task with a failed view is left out, so
    nothing is probed on it."""
    return {task: digest(keys) for task, keys in stage_keys.items() if None not in keys}
