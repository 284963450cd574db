"""Finding the inputs: TotalSegmentator outputs per case, and which cases each disease's labels name."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ctfm.core import nifti
from ctfm.core.errors import DataError
from ctfm.core.fsutil import is_partial
from ctfm.masks.plan import check_diseases
from ctfm.masks.records import FOLDER, MULTILABEL, LabelSource


def find_label_maps(totalseg_dir: Path) -> dict[str, LabelSource]:
    """Cases in a TotalSegmentator output folder: ``<case>.nii.gz`` multilabel files or ``<case>/`` folders
    of ``<class>.nii.gz`` files (a case having both uses the multilabel file)."""
    totalseg_dir = Path(totalseg_dir)
    if not totalseg_dir.is_dir():
        raise DataError(f"{totalseg_dir}: TotalSegmentator folder not found")
    entries = sorted(p for p in totalseg_dir.iterdir() if not p.name.startswith("."))
    multilabel = [p for p in entries if p.is_file() and p.name.endswith((".nii.gz", ".nii"))]
    nifti.refuse_duplicates(totalseg_dir, multilabel)
    found: dict[str, LabelSource] = {}
    for entry in entries:
        if entry.is_dir() and any(p.name.endswith((".nii.gz", ".nii")) for p in entry.iterdir()):
            found.setdefault(entry.name, LabelSource(entry.name, entry, FOLDER))
        elif entry.is_file() and entry.name.endswith((".nii.gz", ".nii")) and not is_partial(entry):
            found[nifti.case_id(entry)] = LabelSource(nifti.case_id(entry), entry, MULTILABEL)
    return found


def cases_from_labels(labels_dir: Path, diseases: Iterable[str] | None = None) -> dict[str, list[str]]:
    """case -> diseases whose ``labels/<disease>.csv`` lists it. Without ``diseases``: every ROI disease that
    has a CSV; a disease asked for by name must have one."""
    from ctfm.core.labels import labels_path, read_labels

    asked = diseases is not None
    names = check_diseases(diseases)
    out: dict[str, list[str]] = {}
    used = 0
    for disease in names:
        path = labels_path(Path(labels_dir), disease)
        if not path.is_file():
            if asked:
                raise DataError(f"{path}: label file not found (needed for --disease {disease})")
            continue
        used += 1
        for case in read_labels(path, disease)["case"]:
            out.setdefault(case, []).append(disease)
    if not used:
        raise DataError(f"{labels_dir}: no <disease>.csv for any ROI disease ({', '.join(names)})")
    return out
