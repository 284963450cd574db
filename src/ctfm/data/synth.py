"""The embedded default benchmark: synthetic abdominal CT phantoms in the public AMOS layout.

Every positive label is caused by a finding planted in the image (see :mod:`ctfm.data.phantom`), so probes must
find it. The folder has exactly the public layout, so every later stage runs on it unchanged::

    out/images/synth_0000.nii.gz      int16 HU, non-identity affine, anisotropic spacing
    out/totalseg/synth_0000.nii.gz    TotalSegmentator v2 multilabel map
    out/labels/<disease>.csv          case_id, split, <disease>, fold0..fold4 (all 15 AMOS diseases)
    out/test_demo/synth_0003.nii.gz   a few test cases for trying containers, flat as the public test_demo,
    out/test_demo/fg_masks/<disease>/ with their ROI masks
    out/manifest.json                 generator version, seed, arguments, per-case findings

Example:
    >>> generate_benchmark(Path("bench"), cases=40, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import pandas as pd

from ctfm import __version__
from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import ConfigError
from ctfm.core.fsutil import link_or_copy, write_text_atomic
from ctfm.core.nifti import NII_SUFFIX, read_array, write
from ctfm.core.pool import run_jobs
from ctfm.core.progress import NO_PROGRESS, Progress
from ctfm.data.geometry import SHAPES
from ctfm.data.phantom import render_case

SYNTH_VERSION = "2.0"  # 2.0: adult-size demo shape on a coarse grid, larger findings, prevalence 0.2-0.4
CASE_PREFIX = "synth_"
PREVALENCE_RANGE = (0.2, 0.4)
TEST_FRACTION = 0.2
N_FOLDS = 5
TEST_DEMO = "test_demo"
TEST_DEMO_CASES = 5
LABEL_SEED_OFFSET = 1_000_003  # label/split stream, independent of every per-case stream
GENERATOR = "ctfm.data.synth"
_CASE = re.compile(rf"{CASE_PREFIX}\d{{4,}}")
# A volume this generator writes, or the temporary of an interrupted write of one (see fsutil.atomic_path).
_OWNED = re.compile(
    rf"(?P<part>\.)?(?P<stem>[^.]+){re.escape(NII_SUFFIX)}(?(part)\..+\.part{re.escape(NII_SUFFIX)})"
)


@dataclass(frozen=True)
class CaseJob:
    """Everything a worker needs to render and write one case (small, picklable)."""

    out: str
    index: int
    name: str
    seed: int
    shape: str
    labels: dict[str, int]
    totalseg_folders: bool


@dataclass
class CaseResult:
    name: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    orientation: str
    findings: dict[str, str] = field(default_factory=dict)


def case_name(index: int) -> str:
    return f"{CASE_PREFIX}{index:04d}"


def assign_labels(cases: int, seed: int, diseases: tuple[str, ...]) -> pd.DataFrame:
    """Splits, folds and labels, stratified by construction.

    Cases are split once into a test group and five fold groups; ``split`` is val for fold group 0 (so it
    equals ``fold0``). Each disease gets a prevalence in :data:`PREVALENCE_RANGE` and the same share of
    positives in every group (at least one positive and one negative per group of two or more cases).
    """
    rng = np.random.default_rng([int(seed), LABEL_SEED_OFFSET])
    perm = rng.permutation(cases)
    n_test = round(TEST_FRACTION * cases) if cases >= N_FOLDS else 0
    groups = [perm[:n_test], *np.array_split(perm[n_test:], N_FOLDS)]
    group_of = np.empty(cases, dtype=int)  # 0 = test, 1..5 = fold group k-1
    for g, members in enumerate(groups):
        group_of[members] = g
    table = pd.DataFrame({"case": [case_name(i) for i in range(cases)]})
    table["split"] = np.where(group_of == 0, "test", np.where(group_of == 1, "val", "train"))
    for k in range(N_FOLDS):
        table[f"fold{k}"] = np.where(group_of == 0, "test", np.where(group_of == k + 1, "val", "train"))
    for disease in diseases:
        p = rng.uniform(*PREVALENCE_RANGE)
        y = np.zeros(cases, dtype=int)
        for members in groups:
            n = len(members)
            if n == 0:
                continue
            k = int(np.clip(round(p * n), 1, n - 1)) if n >= 2 else int(rng.random() < p)
            y[rng.choice(members, size=k, replace=False)] = 1
        table[disease] = y
    return table


def render_and_write(job: CaseJob) -> CaseResult:
    """Worker: render one case and write its image and label map atomically."""
    bench = load_benchmark()
    cmap = bench.class_map("v2")
    ph = render_case(job.seed, job.index, job.shape, job.labels, cmap.ids)
    out = Path(job.out)
    write(out / "images" / f"{job.name}{NII_SUFFIX}", ph.image, ph.affine)
    write(out / "totalseg" / f"{job.name}{NII_SUFFIX}", ph.labelmap, ph.affine)
    if job.totalseg_folders:
        folder = out / "totalseg_folders" / job.name
        for cid, cname in cmap.names.items():
            write(folder / f"{cname}{NII_SUFFIX}", (ph.labelmap == cid).astype(np.uint8), ph.affine)
    return CaseResult(
        name=job.name,
        shape=tuple(int(s) for s in ph.image.shape),
        spacing=tuple(round(float(s), 4) for s in ph.spacing),
        orientation="".join(nib.aff2axcodes(ph.affine)),
        findings=ph.findings,
    )


def _write_labels(out: Path, table: pd.DataFrame, diseases: tuple[str, ...]) -> None:
    folds = [f"fold{k}" for k in range(N_FOLDS)]
    files = table["case"] + NII_SUFFIX
    for disease in diseases:
        frame = pd.DataFrame({"case_id": files, "split": table["split"], disease: table[disease]})
        for fold in folds:
            frame[fold] = table[fold]
        write_text_atomic(out / "labels" / f"{disease}.csv", frame.to_csv(index=False))


def write_test_demo(out: Path, cases: list[str]) -> None:
    """Link a few cases into ``test_demo/`` and write their ROI masks in ``test_demo/fg_masks/<disease>/``: the
    public test_demo's flat layout, which the reference README mounts as a container's inputs
    (``-v $PWD/test_demo/:/workspace/inputs/``, ``MASKS_DIR=/workspace/inputs/fg_masks/<disease>``).

    A mask is the union of the disease's organs in the case's v2 label map, as ``ctfm masks`` builds it without
    a margin (the phantom's label maps are exact: no class-map detection or QC is needed here).
    """
    bench = load_benchmark()
    ids = bench.class_map("v2").ids
    organ_ids = {d: [ids[o] for o in bench.roi_organs(d) if o in ids] for d in bench.roi_diseases}
    for case in cases:
        link_or_copy(out / "images" / f"{case}{NII_SUFFIX}", out / TEST_DEMO / f"{case}{NII_SUFFIX}")
        labelmap, img = read_array(out / "totalseg" / f"{case}{NII_SUFFIX}")
        for disease, wanted in organ_ids.items():
            dest = out / TEST_DEMO / "fg_masks" / disease / f"{case}{NII_SUFFIX}"
            write(dest, np.isin(labelmap, wanted).astype(np.uint8), img.affine)


def _check_args(cases: int, seed: int, shape: str, workers: int) -> None:
    if cases < 1:
        raise ConfigError(f"--cases must be at least 1 (got {cases})")
    if seed < 0:
        raise ConfigError(f"--seed must be 0 or more (got {seed})")
    if shape not in SHAPES:
        raise ConfigError(f"--shape must be one of {', '.join(SHAPES)} (got {shape!r})")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {workers})")


def _prepare_out(out: Path, arguments: dict[str, object], keep: set[str]) -> None:
    """Refuse a non-empty folder that is not a synthetic benchmark; mark the folder unfinished before any file
    changes (an interrupted run is then recognised, rerun and flagged by ``ctfm data check``); drop what an
    earlier run wrote that this one will not rewrite."""
    if out.exists() and any(out.iterdir()) and read_manifest(out).get("generator") != GENERATOR:
        raise ConfigError(f"{out} is not empty and not a synthetic benchmark; choose a new or empty --out")
    started = {"generator": GENERATOR, "generator_version": SYNTH_VERSION, "complete": False}
    write_text_atomic(out / "manifest.json", json.dumps({**started, "arguments": arguments}, indent=1) + "\n")
    for folder in (out / "images", out / "totalseg"):
        _drop_owned(folder, keep)
    demo = out / TEST_DEMO
    for folder in (demo, demo / "images", *(demo / "fg_masks").glob("*/")):
        _drop_owned(folder, set())  # derived: rebuilt from the new cases
    _remove_if_empty(demo / "images")  # where versions before the flat public layout put them
    classes = set(load_benchmark().class_map("v2").names.values())
    by_class = out / "totalseg_folders"
    for folder in by_class.glob(f"{CASE_PREFIX}*/"):
        if arguments["totalseg_folders"] and folder.name in keep:
            _drop_owned(folder, classes, classes.__contains__)  # only interrupted writes' temporaries
        elif _is_case(folder.name):
            _drop_owned(folder, set(), classes.__contains__)
            _remove_if_empty(folder)
    _remove_if_empty(by_class)


def _is_case(stem: str) -> bool:
    return _CASE.fullmatch(stem) is not None


def _drop_owned(folder: Path, keep: set[str], owns: Callable[[str], bool] = _is_case) -> None:
    """Delete the volumes this generator writes in ``folder`` (``owns`` their stem) that are not in ``keep``,
    and the temporaries of interrupted writes; anything else is the user's."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = _OWNED.fullmatch(path.name)
        if match and path.is_file() and owns(match["stem"]) and (match["part"] or match["stem"] not in keep):
            path.unlink()


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # absent, or holds the user's files
        folder.rmdir()


def generate_benchmark(
    out: Path,
    cases: int = 100,
    seed: int = 0,
    shape: Literal["demo", "full"] = "demo",
    workers: int = 1,
    totalseg_folders: bool = False,
    progress: Progress = NO_PROGRESS,
) -> Path:
    """Write a synthetic benchmark folder; deterministic in (cases, seed, shape), whatever ``workers`` is."""
    _check_args(cases, seed, shape, workers)
    out = Path(out)
    bench = load_benchmark()
    diseases = bench.diseases
    table = assign_labels(cases, seed, diseases)
    jobs = [
        CaseJob(
            out=str(out),
            index=i,
            name=row["case"],
            seed=int(seed),
            shape=shape,
            labels={d: int(row[d]) for d in diseases},
            totalseg_folders=totalseg_folders,
        )
        for i, row in table.iterrows()
    ]
    arguments = {"cases": cases, "seed": int(seed), "shape": shape, "totalseg_folders": totalseg_folders}
    _prepare_out(out, arguments, set(table["case"]))
    results = {r.name: r for r in run_jobs(render_and_write, jobs, workers, progress, "synth")}
    _write_labels(out, table, diseases)
    test_cases = sorted(table.loc[table["split"] == "test", "case"]) or list(table["case"])  # tiny runs
    demo_cases = test_cases[:TEST_DEMO_CASES]
    write_test_demo(out, demo_cases)
    manifest = {
        "generator": GENERATOR,
        "generator_version": SYNTH_VERSION,
        "complete": True,
        "ctfm_version": __version__,
        "seed": int(seed),
        "arguments": arguments,
        "class_map": "v2",
        "diseases": {
            d: {"positives": int(table[d].sum()), "prevalence": round(float(table[d].mean()), 4)}
            for d in diseases
        },
        "test_demo": {"cases": demo_cases, "fg_masks": True},
        "cases": [asdict(results[name]) for name in table["case"]],
    }
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return out


def read_manifest(root: Path) -> Mapping[str, object]:
    """The manifest of a synthetic benchmark (empty for a folder that is not one)."""
    path = Path(root) / "manifest.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}
