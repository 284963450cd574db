"""Per-task shards of a store view and the idempotent merge that folds them into the view's manifest.

Many cluster tasks may fill one view at once on a shared file system where POSIX locks cannot be trusted
across nodes. So a task never writes the view's own manifest or ``embeddings/``: it writes a shard of its own,
``<view>/shards/<shard>/`` (``manifest.jsonl`` and ``embeddings/<case>.h5``, each file written atomically, the
row appended after its file), and reads the view's records with its own on top, so a rerun or a requeued task
skips every case already stored in either. A killed task loses only the case it was writing.

:func:`merge_shards` runs where one process holds the view (the submitting command, any later ``ctfm
extract``, ``ctfm status``): each shard row newer than the view's row of the case has its file renamed into
``embeddings/`` and is appended to the view's manifest. A merge killed anywhere is finished by the next one and
never applies a row twice: a row is applied only while the view's row of its case is older, and a file already
renamed is found in its place.

Example:
    >>> shard = ShardView(Store(root).view("hu-stats", "lp", "full"), "job1-0")  # doctest: +SKIP
    >>> shard.write_case("c1", y_hat, record)  # doctest: +SKIP
    >>> merge_shards(Store(root).view("hu-stats", "lp", "full")).merged  # doctest: +SKIP
    1
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ctfm.core.fsutil import ABANDONED_S, remove_partials, write_text_atomic
from ctfm.core.nifti import check_case
from ctfm.store.layout import EMBEDDINGS, MANIFEST, MODEL_NAME
from ctfm.store.manifest import CaseRecord, Manifest
from ctfm.store.view import View

SHARDS = "shards"
CLOSED = "closed"  # in a shard folder: its task ended (ok or not); no more rows will come


class _ShardManifest(Manifest):
    """A shard's own manifest file, read (incrementally, as every manifest) on top of the view's records."""

    def __init__(self, path: Path, base: Manifest) -> None:
        super().__init__(path)
        self.base = base
        self._own: dict[str, CaseRecord] = {}

    def _refresh(self) -> None:
        self._records = self._own
        super()._refresh()
        self._own = self._records
        self._records = {**self.base.latest(), **self._own}

    def own(self) -> dict[str, CaseRecord]:
        self._refresh()
        return dict(self._own)

    def append(self, record: CaseRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        super().append(record)


class ShardView(View):
    """``view`` as one task sees it: every read sees the view's records with the shard's on top; every write
    (embedding files, manifest rows) goes to ``<view>/shards/<shard>/``."""

    def __init__(self, view: View, shard: str) -> None:
        super().__init__(view.dir.parents[2], view.name, view.task, view.view)
        self.base = view
        self.shard = check_case(shard)
        self.shard_dir = self.dir / SHARDS / shard
        self.embeddings_dir = self.shard_dir / EMBEDDINGS
        self.manifest_path = self.shard_dir / MANIFEST
        self._manifest = _ShardManifest(self.manifest_path, view._manifest)

    def __repr__(self) -> str:
        return f"ShardView({self.model}/{self.task}/{self.view}/{self.shard})"

    @property
    def lock_dir(self) -> Path:
        """Only this task writes its shard: other tasks of the view never wait for it."""
        return self.shard_dir

    def own_records(self) -> dict[str, CaseRecord]:
        """The latest row of every case this shard holds (without the view's)."""
        return self._manifest.own()

    def remove_abandoned(self) -> None:
        if self.shard_dir.is_dir():
            remove_partials(self.shard_dir, older_than=ABANDONED_S)

    def close(self) -> None:
        """Mark the shard finished, so a merge may remove it once its rows are in the view."""
        write_text_atomic(self.shard_dir / CLOSED, f"{time.time()}\n")


def done_in_shard(view: View, case: str) -> bool:
    """True when ``view`` is a cluster task's shard that already stored ``case`` ok: under ``--force`` a task
    requeued by Slurm redoes what was stored before its job, never what its own first attempt finished."""
    if not isinstance(view, ShardView):
        return False
    rec = view.own_records().get(case)
    return rec is not None and rec.status == "ok"


def open_view(view: View, shard: str | None) -> View:
    """``view`` itself, or the shard ``shard`` of it (a cluster task's)."""
    return view if shard is None else ShardView(view, shard)


@dataclass
class MergeReport:
    """What :func:`merge_shards` did: rows applied, rows whose file is gone (their case is not done and runs
    again), shards removed and shards left because their task may still write."""

    merged: int = 0
    lost: list[str] = field(default_factory=list)
    removed: int = 0
    open: int = 0


def shard_dirs(view: View) -> list[Path]:
    """The view's shard folders, sorted."""
    root = view.dir / SHARDS
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def merge_shards(view: View) -> MergeReport:
    """Fold every shard of ``view`` into its manifest; idempotent, safe to interrupt and to run again.

    The caller holds the view (``exclusive_use(view.dir)``) on one machine; tasks may still be writing their
    shards. A shard is removed once its rows are merged and its task closed it (or left it untouched for
    :data:`ctfm.core.fsutil.ABANDONED_S`).
    """
    report = MergeReport()
    for folder in shard_dirs(view):
        shard = ShardView(view, folder.name)
        for case, rec in sorted(shard.own_records().items()):
            _merge_row(view, shard, case, rec, report)
        if _finished(folder):
            shutil.rmtree(folder, ignore_errors=True)
            report.removed += 1
        else:
            report.open += 1
    with contextlib.suppress(OSError):
        (view.dir / SHARDS).rmdir()  # only when empty
    return report


def _merge_row(view: View, shard: ShardView, case: str, rec: CaseRecord, report: MergeReport) -> None:
    current = view.record(case)
    if current is not None and current.written_at >= rec.written_at:
        return  # merged before, or the view holds a later result of the case
    rec = dataclasses.replace(rec)
    dest = view.case_path(case)
    if rec.status == "ok":
        src = view.dir / rec.file
        if src.parent == shard.embeddings_dir:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.replace(src, dest)  # atomic on one file system; already done by a merge killed here
            rec.file = str(dest.relative_to(view.dir))
        if not (view.dir / rec.file).is_file():
            report.lost.append(case)
            return
    else:
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()  # as View.record_failure: a failed case keeps no older embedding
    view._append(rec)
    report.merged += 1


def _finished(folder: Path) -> bool:
    if (folder / CLOSED).is_file():
        return True
    try:
        newest = max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)
    except FileNotFoundError:  # its task is writing right now
        return False
    return time.time() - newest > ABANDONED_S


@contextlib.contextmanager
def shard_session(view: View) -> Iterator[None]:
    """Around a run that writes ``view`` (held by the caller): a plain view first takes in what cluster tasks
    stored (so the run neither redoes nor misses it); a shard is reopened, and closed when the run ends."""
    if not isinstance(view, ShardView):
        merge_shards(view)
        yield
        return
    with contextlib.suppress(FileNotFoundError):
        (view.shard_dir / CLOSED).unlink()  # a requeued task writes again
    try:
        yield
    finally:
        view.close()


def view_at(folder: Path) -> View:
    """The view whose folder is ``<root>/<model>/<task>/<view>``, under the model name that owns it."""
    import json

    folder = Path(folder)
    try:
        name = json.loads((folder.parents[1] / MODEL_NAME).read_text())["name"]
    except (OSError, ValueError, KeyError, TypeError):
        name = folder.parents[1].name
    return View(folder.parents[2], name, folder.parent.name, folder.name)
