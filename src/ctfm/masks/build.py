"""The batch: every case and disease of a folder of label maps, in a process pool, resumable."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from ctfm.core import nifti
from ctfm.core.benchmark import ClassMap
from ctfm.core.errors import ConfigError, DataError
from ctfm.core.fsutil import ABANDONED_S, exclusive_use, remove_partials
from ctfm.core.pool import run_jobs
from ctfm.core.progress import NO_PROGRESS, Progress
from ctfm.masks.case import MaskJob, drop_stale_mask, mask_path, process_case
from ctfm.masks.discovery import find_label_maps
from ctfm.masks.plan import check_covers, check_diseases, resolve_class_map
from ctfm.masks.records import FAILED, REPORT_NAME, LabelSource, MaskReport, MaskRow, write_report


def build_masks(
    totalseg_dir: Path,
    out_dir: Path,
    diseases: Iterable[str] | None = None,
    cases: Iterable[str] | Mapping[str, Iterable[str]] | None = None,
    workers: int = 1,
    margin_mm: float = 0.0,
    force: bool = False,
    class_map: ClassMap | str | Path | None = None,
    progress: Progress = NO_PROGRESS,
) -> MaskReport:
    """Write ``<out_dir>/<disease>/<case>.nii.gz`` for every case and disease, and ``masks_report.csv``.

    ``cases``: names (each gets every requested disease), a mapping case -> diseases (see
    :func:`cases_from_labels`), or None for every case in ``totalseg_dir``. A case without a label map, an
    unreadable map or a v1-numbered map (refused unless ``class_map`` is given explicitly) gives failed rows and
    the batch goes on. Up-to-date outputs are skipped unless ``force``.
    """
    names = check_diseases(diseases)
    if not math.isfinite(margin_mm) or margin_mm < 0:
        raise ConfigError(f"--margin-mm must be a finite number >= 0, got {margin_mm}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    cmap = resolve_class_map(class_map)
    check_covers(cmap, names)
    sources = find_label_maps(totalseg_dir)
    if not sources and cases is None:
        raise DataError(f"{totalseg_dir}: no label maps (<case>.nii.gz files or <case>/ class folders)")
    wanted = _case_diseases(cases, sources, names)
    out_dir = Path(out_dir)
    with exclusive_use(out_dir):  # a second masks run into this folder is refused
        remove_partials(out_dir, older_than=ABANDONED_S)  # what a killed run left
        report = MaskReport()
        jobs = []
        for case, case_diseases in wanted.items():
            if case not in sources:
                where = Path(totalseg_dir) / f"{case}{nifti.NII_SUFFIX}"
                msg = f"{where}: no label map (neither {where.name} nor folder {case}/)"
                report.rows += [MaskRow(case, d, 0, 0.0, FAILED, msg) for d in case_diseases]
                for disease in case_diseases:
                    drop_stale_mask(mask_path(out_dir, disease, case))
                continue
            jobs.append(
                MaskJob(
                    sources[case], tuple(case_diseases), out_dir, cmap, class_map is None, margin_mm, force
                )
            )
        report.workers = min(workers, max(1, len(jobs)))
        for result in run_jobs(process_case, jobs, workers, progress, "masks"):
            report.rows += result.rows
            report.written += result.written
            report.skipped += result.skipped
            report.maps_read += result.read
        order = {d: i for i, d in enumerate(names)}
        report.rows.sort(key=lambda r: (r.case, order.get(r.disease, len(order))))
        report.path = write_report(report.rows, out_dir / REPORT_NAME)
        return report


def _case_diseases(
    cases: Iterable[str] | Mapping[str, Iterable[str]] | None,
    sources: Mapping[str, LabelSource],
    names: list[str],
) -> dict[str, list[str]]:
    if cases is None:
        return {case: list(names) for case in sources}
    if isinstance(cases, Mapping):
        return {
            case: [d for d in names if d in set(ds)] for case, ds in cases.items() if set(ds) & set(names)
        }
    return {nifti.case_id(case): list(names) for case in cases}
