"""A submitted job on disk: its tasks (pickled calls), what each task reported, its logs.

Layout, under an output folder's ``.ctfm/jobs/`` (``ctfm status OUT`` reads it)::

    <key>/job.json        name, Slurm job id, task labels, targets (store views / folders the tasks write)
    <key>/tasks/<i>.pkl   task i: a top-level function and its arguments, run by ``ctfm _task``
    <key>/tasks/<i>.json  what task i reported: running, done, incomplete or failed (with why)
    <key>/logs/<i>.log    task i's output (Slurm appends a requeued attempt's)

Every file is written atomically by one writer: the submitter writes ``job.json`` and the calls, task ``i``
writes only its own report, so no lock is needed on a shared file system.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctfm.core.errors import DataError
from ctfm.core.fsutil import write_bytes_atomic, write_text_atomic

JOBS_DIR = Path(".ctfm") / "jobs"
# task states: a report's, then what the queue or accounting adds for tasks that could not report
FINISHED = ("done", "incomplete", "failed")


@dataclass
class TaskCall:
    """One array task: ``fn(**kwargs)`` returns a JSON-able dict with ``rc`` (0 done, 1 some items failed)."""

    label: str
    fn: Callable[..., dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskState:
    """What one task is doing, from its own report and the scheduler's view."""

    index: int
    label: str
    state: str  # pending, running, done, incomplete, failed
    job_id: str = ""
    log: str = ""
    reason: str = ""
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


def jobs_root(out: Path) -> Path:
    return Path(out) / JOBS_DIR


class JobDir:
    """One submission's folder (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def key(self) -> str:
        return self.path.name

    @classmethod
    def create(cls, root: Path, name: str, targets: list[str]) -> JobDir:
        key = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        job = cls(Path(root) / key)
        (job.path / "logs").mkdir(parents=True)
        job.write_meta({"name": name, "targets": sorted(targets), "created": time.time(), "labels": []})
        return job

    def add_calls(self, calls: list[TaskCall]) -> None:
        for index, call in enumerate(calls):
            write_bytes_atomic(self.call_path(index), pickle.dumps(call))
        self.write_meta({**self.meta(), "labels": [c.label for c in calls]})

    def meta(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "job.json").read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.path / 'job.json'}: unreadable job record ({exc})") from None

    def write_meta(self, meta: dict[str, Any]) -> None:
        write_text_atomic(self.path / "job.json", json.dumps(meta, indent=1) + "\n")

    @property
    def slurm_id(self) -> str:
        return str(self.meta().get("slurm_id", ""))

    def call_path(self, index: int) -> Path:
        return self.path / "tasks" / f"{index}.pkl"

    def load_call(self, index: int) -> TaskCall:
        try:
            return pickle.loads(self.call_path(index).read_bytes())
        except (OSError, pickle.UnpicklingError, AttributeError, ImportError) as exc:
            raise DataError(
                f"{self.call_path(index)}: unreadable task ({type(exc).__name__}: {exc})"
            ) from None

    def log_path(self, index: int) -> Path:
        return self.path / "logs" / f"{index}.log"

    def report(self, index: int) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / "tasks" / f"{index}.json").read_text())
        except (OSError, ValueError):
            return None

    def write_report(self, index: int, **fields: Any) -> None:
        fields.setdefault("time", time.time())
        fields.setdefault("host", os.uname().nodename)
        write_text_atomic(self.path / "tasks" / f"{index}.json", json.dumps(fields, default=str) + "\n")


def list_jobs(root: Path) -> list[JobDir]:
    """Every job under ``root`` (``.ctfm/jobs``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [JobDir(p) for p in sorted(root.iterdir()) if (p / "job.json").is_file()]
