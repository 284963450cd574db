"""``ctfm store import``: a folder of reference-format ``<case>.h5`` files (and its timing CSV) into a view,
each file read as untrusted (:mod:`ctfm.store.untrusted`) and stored in the store's own file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ctfm.core.errors import StoreError
from ctfm.core.nifti import check_case
from ctfm.store.manifest import CaseRecord
from ctfm.store.timing import find_timing_csv, read_timing_csv
from ctfm.store.untrusted import H5Reader
from ctfm.store.view import View


@dataclass
class ImportReport:
    """What ``import_folder`` did: number of ok cases, (case, reason) of every rejected file, and the timing
    CSV read (if any) with the imported cases it has no row for."""

    ok: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    timing: Path | None = None
    untimed: list[str] = field(default_factory=list)


def import_folder(view: View, h5_dir: Path, timing: Path | None = None) -> ImportReport:
    """Import every ``<case>.h5`` in ``h5_dir`` into ``view``; bad files are recorded failed, not fatal
    (a case already stored keeps its embedding).

    Each case's seconds come from the reference timing CSV ``timing``, or the one beside the files
    (:func:`find_timing_csv`). For lp the first good file fixes D (or the view's existing D); files of another
    D are rejected.
    """
    h5_dir = Path(h5_dir)
    if not h5_dir.is_dir():
        raise StoreError(f"{h5_dir}: not a folder of <case>.h5 files")
    files = sorted(p for p in h5_dir.glob("*.h5") if not p.name.startswith("."))  # links and folders too
    if not files:
        raise StoreError(f"{h5_dir}: no <case>.h5 files found")
    report = ImportReport(
        timing=Path(timing) if timing is not None else find_timing_csv(h5_dir, view.image_name)
    )
    seconds = read_timing_csv(report.timing) if report.timing is not None else {}
    with H5Reader() as reader:
        for path in files:
            _import_one(view, path, seconds, report, reader)
    return report


def _import_one(
    view: View, path: Path, seconds: dict[str, float], report: ImportReport, reader: H5Reader
) -> None:
    """One file of :func:`import_folder`: stored, or recorded failed with one line."""
    case = path.stem
    try:
        check_case(case)
    except StoreError as exc:
        report.failed.append((case, str(exc)))
        return
    if report.timing is not None and case not in seconds:
        report.untimed.append(case)
    record = CaseRecord(case=case, status="ok", extractor="import", seconds=seconds.get(case, 0.0))
    try:
        view.import_file(case, path, record, reader)
        report.ok += 1
    except StoreError as exc:
        if view.is_done(case):  # a bad new file never costs the embedding already stored
            report.failed.append((case, f"{exc} (kept the embedding already stored)"))
            return
        view.record_failure(case, "failed", str(exc), extractor="import", seconds=record.seconds)
        report.failed.append((case, str(exc)))
