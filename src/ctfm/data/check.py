"""Validate a benchmark folder before anything runs on it: every problem, not just the first.

Checks the label CSVs (columns by name, split values, integer labels, listed cases have images), reads every
volume in full (a truncated ``.nii.gz`` only fails when its data is decompressed), compares each label map and
mask with its image's grid, refuses non-integer label maps and TotalSegmentator v1 numbering where v2 is expected.

Example:
    >>> report = check_benchmark(Path("bench"), workers=2)  # doctest: +SKIP
    >>> report.ok, len(report.problems)  # doctest: +SKIP
    (True, 0)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import ConfigError, CtfmError, DataError
from ctfm.core.labels import read_labels
from ctfm.core.nifti import (
    Geometry,
    as_volume,
    case_id,
    check_case,
    duplicate_cases,
    find_volume,
    geometry,
    hidden_volumes,
    list_volumes,
    nonfinite_problem,
    odd_entries,
    read_image_fast,
    voxel_problem,
)
from ctfm.core.progress import NO_PROGRESS, Progress, tracked
from ctfm.data.synth import read_manifest


@dataclass(frozen=True)
class Problem:
    """One problem found: the file (relative to the benchmark root), the case it concerns, what is wrong."""

    file: str
    case: str
    problem: str


@dataclass
class DatasetReport:
    """What ``ctfm data check`` found in a dataset folder: its problems and what it counted."""

    root: Path
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # hidden volume-like files, skipped by every stage

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _VolumeJob:
    path: Path
    kind: str  # "image", "totalseg" or "mask"
    image: Path | None = None  # the image whose grid a label map must share


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _message(exc: Exception, path: Path) -> str:
    """A DataError's text without the leading file name (the table has its own file column)."""
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _v1_evidence(labels: np.ndarray, affine: np.ndarray) -> str | None:
    """Why a label map looks v1-numbered (the masks' detector: votes summing below zero), or None."""
    from ctfm.core.class_map_version import class_map_votes

    votes = class_map_votes(labels, affine)
    if sum(v for _, v in votes) >= 0:
        return None
    return "; ".join(reason for reason, v in votes if v < 0)


def _check_volume(root: Path, job: _VolumeJob, class_map: str) -> list[Problem]:
    """The problems of one volume; an unexpected failure is one problem too, never the end of the check."""
    try:
        return _volume_problems(root, job, class_map)
    except Exception as exc:  # e.g. an RGB label map numpy cannot compare: report it, check the rest
        return [
            Problem(_rel(root, job.path), case_id(job.path), f"cannot check: {type(exc).__name__}: {exc}")
        ]


def _volume_problems(root: Path, job: _VolumeJob, class_map: str) -> list[Problem]:
    rel, case = _rel(root, job.path), case_id(job.path)
    try:
        data, img = read_image_fast(job.path)  # one decompression, not nibabel's stream
        data = as_volume(data, job.path)
    except DataError as exc:
        return [Problem(rel, case, _message(exc, job.path))]
    if not np.issubdtype(data.dtype, np.number):
        return [Problem(rel, case, f"voxel type {data.dtype} is not numeric (an RGB image?)")]
    if job.kind == "image":
        return [
            Problem(rel, case, p)
            for p in (_name_problem(case), voxel_problem(img), nonfinite_problem(data))
            if p
        ]
    problems: list[Problem] = []
    if job.image is None or not job.image.is_file():
        problems.append(
            Problem(rel, case, f"{job.kind} without an image ({_rel(root, job.image or job.path)})")
        )
    else:
        try:
            ref = geometry(job.image)
        except DataError as exc:
            ref = None
            problems.append(Problem(rel, case, f"cannot read its image's header: {_message(exc, job.image)}"))
        own = Geometry(tuple(int(s) for s in data.shape[:3]), np.asarray(img.affine, dtype=np.float64))
        if ref is not None and not own.matches(ref):
            what = "shape" if own.shape != ref.shape else "affine"
            problems.append(
                Problem(
                    rel,
                    case,
                    f"{job.kind} {what} differs from its image: {own.describe()} vs {ref.describe()}",
                )
            )
    if not np.issubdtype(data.dtype, np.integer) and not np.array_equal(data, np.round(data)):
        problems.append(Problem(rel, case, f"{job.kind} has non-integer values (dtype {data.dtype})"))
        return problems
    if job.kind == "mask" and data.size and (data.min() < 0 or data.max() > 1):
        problems.append(Problem(rel, case, f"mask is not binary (values {data.min()}..{data.max()})"))
    if job.kind == "totalseg" and class_map == "v2":
        evidence = _v1_evidence(np.asarray(data), img.affine)
        if evidence:
            problems.append(
                Problem(
                    rel,
                    case,
                    f"TotalSegmentator v1 numbering where v2 is expected ({evidence}); "
                    "re-run TotalSegmentator v2 (task total)",
                )
            )
    return problems


def _name_problem(case: str) -> str | None:
    """Why a case name cannot be stored (the store names files after cases), else None."""
    try:
        check_case(case)
    except CtfmError as exc:
        return f"{exc}: rename the file"
    return None


def _check_label_files(root: Path, report: DatasetReport) -> None:
    labels_dir = root / "labels"
    if not labels_dir.is_dir():
        report.problems.append(Problem("labels/", "", "no labels/ folder"))
        return
    csvs = sorted(p for p in labels_dir.glob("*.csv") if not p.name.startswith("."))
    if not csvs:
        report.problems.append(Problem("labels/", "", "no label CSV files"))
    report.counts["label files"] = len(csvs)
    for path in csvs:
        rel = _rel(root, path)
        try:
            table = read_labels(path, path.stem)
        except DataError as exc:
            report.problems.append(Problem(rel, "", _message(exc, path)))
            continue
        for case, file in zip(table["case"], table["file"], strict=True):
            if find_volume(root / "images", case) is None:
                report.problems.append(Problem(rel, case, f"listed case has no image images/{file}"))
        report.problems += [Problem(rel, case, problem) for case, problem in _class_problems(table)]


def _class_problems(table: pd.DataFrame, least_cases: int = 20) -> list[tuple[str, str]]:
    """Classes a probe cannot learn: seen in one case only (often a typo, e.g. 7 for 1) or never in train.
    Label files of fewer than ``least_cases`` cases (tiny demo sets) are not judged."""
    problems: list[tuple[str, str]] = []
    if len(table) < least_cases:
        return problems
    for label, rows in table.groupby("label"):
        cases = rows["case"].tolist()
        if len(cases) < 2:
            problems.append((cases[0], f"class {label} has this case only: a typo? every class needs cases"))
        elif not (rows["split"] == "train").any():
            problems.append((cases[0], f"class {label} never appears in train ({len(cases)} cases)"))
    return problems


def _with_image(path: Path, kind: str, images_dir: Path) -> _VolumeJob:
    """A label map or mask with its image (``.nii.gz`` or ``.nii``, whichever the case has)."""
    case = case_id(path)
    return _VolumeJob(path, kind, find_volume(images_dir, case) or images_dir / f"{case}.nii.gz")


def _volume_folders(root: Path) -> list[tuple[Path, str, Path | None]]:
    """Each folder of volumes with their kind and the images folder whose grids they must share."""

    def masks(folder: Path, images: Path) -> list[tuple[Path, str, Path | None]]:
        subs = sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
        return [(sub, "mask", images) for sub in subs]

    images, demo = root / "images", root / "test_demo"
    demo_images = demo / "images" if (demo / "images").is_dir() else demo  # flat as published, or older
    folders = [
        (images, "image", None),
        (root / "totalseg", "totalseg", images),
        *masks(root / "fg_masks", images),
        (demo_images, "image", None),
        *masks(demo / "fg_masks", demo_images),
    ]
    return [f for f in folders if f[0].is_dir()]


def volume_jobs(root: Path) -> list[_VolumeJob]:
    """Every volume of the benchmark folder with what it must agree with."""
    return [
        _VolumeJob(p, kind) if images is None else _with_image(p, kind, images)
        for folder, kind, images in _volume_folders(root)
        for p in list_volumes(folder)
    ]


def _hidden_volumes(root: Path) -> list[str]:
    """Hidden files named like volumes (macOS ``._`` copies, an interrupted write's temporary): every stage
    skips them, so the check names them rather than letting a case look present."""
    return [_rel(root, p) for folder, _, _ in _volume_folders(root) for p in hidden_volumes(folder)]


def _check_duplicates(root: Path, jobs: list[_VolumeJob], report: DatasetReport) -> None:
    by_folder: dict[Path, list[Path]] = {}
    for job in jobs:
        by_folder.setdefault(job.path.parent, []).append(job.path)
    for folder, paths in by_folder.items():
        for case, names in duplicate_cases(paths).items():
            problem = f"{' and '.join(names)} are both this case; keep one"
            report.problems.append(Problem(_rel(root, folder / names[0]), case, problem))


def check_benchmark(
    root: Path,
    workers: int = 2,
    progress: Progress = NO_PROGRESS,
    class_map: str = "v2",
) -> DatasetReport:
    """Check a benchmark folder; reads every volume in a thread pool (zlib and numpy release the GIL)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; pass the benchmark root (with images/, labels/, totalseg/)")
    known = load_benchmark().raw["class_maps"]
    if class_map not in known:
        raise ConfigError(f"--class-map {class_map!r} is not one of {', '.join(known)}")
    report = DatasetReport(root=root)
    if not (root / "images").is_dir():
        report.problems.append(Problem("images/", "", "no images/ folder"))
    else:
        for case, (path, why) in sorted(odd_entries(root / "images").items()):
            report.problems.append(Problem(_rel(root, path), case, why))
    if read_manifest(root).get("complete") is False:
        unfinished = "generation did not finish (interrupted?): rerun `ctfm data synth` with the same --out"
        report.problems.append(Problem("manifest.json", "", unfinished))
    _check_label_files(root, report)
    jobs = volume_jobs(root)
    report.ignored = _hidden_volumes(root)
    _check_duplicates(root, jobs, report)
    for kind in ("image", "totalseg", "mask"):
        report.counts[f"{kind}s" if kind != "totalseg" else "label maps"] = sum(j.kind == kind for j in jobs)
    with tracked(progress, "check", len(jobs)) as advance, ThreadPoolExecutor(max(1, workers)) as pool:
        for found in pool.map(lambda j: _check_volume(root, j, class_map), jobs):
            report.problems.extend(found)
            advance(1)
    return report
