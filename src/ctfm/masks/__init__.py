"""TotalSegmentator label maps -> per-disease foreground masks (the crops ROI diseases are scored on).

A disease's mask is the union of its organs (``load_benchmark().roi_organs``), optionally dilated by a margin in
millimetres. Each label map is read once and every requested disease is written from that read; diseases with the
same organs share one encoded file. Outputs record in their NIfTI ``descrip`` what they were built from, so a re-run
skips what is up to date and redoes what a changed margin or class map invalidates.

Modules: :mod:`~ctfm.masks.plan` (organs as bits, class maps), :mod:`~ctfm.masks.compute` (the arithmetic on one
map), :mod:`~ctfm.masks.case` (one case, resumable), :mod:`~ctfm.masks.build` (the batch),
:mod:`~ctfm.masks.discovery` (finding inputs), :mod:`~ctfm.masks.records` (the QC report),
:mod:`~ctfm.masks.totalseg` (running TotalSegmentator). Telling v1 from v2 label maps lives in
:mod:`ctfm.core.class_map_version` (the dataset check uses it too).

Example:
    >>> from ctfm.masks import build_masks
    >>> report = build_masks(Path("bench/totalseg"), Path("bench/fg_masks"), workers=2)  # doctest: +SKIP
    >>> report.counts()  # doctest: +SKIP
    {'ok': 418, 'organ_missing': 2}
"""

from ctfm.masks.build import build_masks
from ctfm.masks.compute import disease_masks
from ctfm.masks.discovery import cases_from_labels, find_label_maps
from ctfm.masks.plan import resolve_class_map
from ctfm.masks.records import (
    EMPTY,
    FAILED,
    OK,
    ORGAN_MISSING,
    REPORT_NAME,
    STATUSES,
    LabelSource,
    MaskReport,
    MaskRow,
)
from ctfm.masks.totalseg import organs_needed, run_totalsegmentator, totalsegmentator_missing

__all__ = [
    "EMPTY",
    "FAILED",
    "OK",
    "ORGAN_MISSING",
    "REPORT_NAME",
    "STATUSES",
    "LabelSource",
    "MaskReport",
    "MaskRow",
    "build_masks",
    "cases_from_labels",
    "disease_masks",
    "find_label_maps",
    "organs_needed",
    "resolve_class_map",
    "run_totalsegmentator",
    "totalsegmentator_missing",
]
