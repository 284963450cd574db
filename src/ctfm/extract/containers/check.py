"""``ctfm check-container``: a participant's dry run of an image exactly as the organizers will run it.

Besides running it twice (batched over all demo cases, then one container per case) under the production
settings, it checks what the reference runner needs and ctfm does not: the tarball's name gives the image
the reference starts (``acme_lp.tar.gz`` -> ``acme_lp:latest``), the image has ``/bin/bash`` and the entry
script in its working directory, and the script does not rely on variables only an older ctfm set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import posixpath
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctfm.core.benchmark import load_benchmark
from ctfm.extract.containers.engine import RunSettings, parse_bytes
from ctfm.extract.containers.imagefs import paths_present
from ctfm.extract.containers.outputs import embedding_problems
from ctfm.extract.containers.runner import ContainerResult, ContainerRunner
from ctfm.extract.containers.tarballs import TeamImage, naming_problems, reference_name
from ctfm.extract.containers.teams import collect_inputs, human_bytes

CTFM_ONLY_VARIABLES = re.compile(r"\b(INPUT_DIR|OUTPUT_DIR)\b")
EAO_HEADS = 4  # the reference EAO head's attention heads: D must be a multiple


@dataclass
class CheckItem:
    name: str
    passed: bool
    detail: str


@dataclass
class CheckReport:
    """``ctfm check-container``: one line per check, and the measured figures."""

    image: TeamImage
    cases: int
    items: list[CheckItem] = field(default_factory=list)
    seconds_per_case: float | None = None
    peak_memory: int | None = None

    @property
    def passed(self) -> bool:
        return bool(self.items) and all(i.passed for i in self.items)

    def add(self, name: str, passed: bool, detail: str) -> None:
        self.items.append(CheckItem(name, passed, detail))


@contextlib.contextmanager
def temporary_folder(prefix: str = "ctfm-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def is_tarball(source: str | Path) -> bool:
    src = Path(source)
    return src.is_file() or src.name.endswith((".tar", ".tar.gz", ".tgz"))


def check_container(
    source: str | Path,
    images_dir: Path,
    settings: RunSettings,
    masks_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
    log_path: Path | None = None,
) -> CheckReport:
    """Dry-run an image twice under the production settings: batched over all cases, then one per case."""
    settings = dataclasses.replace(settings, measure_memory=True)
    runs: list[dict[str, np.ndarray]] = [{}, {}]
    times: dict[str, float] = {}
    results: list[ContainerResult] = []
    with temporary_folder("ctfm-check-") as tmp, ContainerRunner(tmp / "work", settings, log=log) as runner:
        tarball = Path(source) if is_tarball(source) else None
        image = runner.load_tarball(tarball) if tarball else runner.resolve_tag(str(source))
        try:
            present = paths_present(
                runner.client, image.image_id, ["/bin/bash", _script_path(image, settings)]
            )
            inputs, no_mask, refused = collect_inputs(images_dir, masks_dir)
            gpu = settings.gpus[0] if settings.gpus else None
            with Path(log_path or tmp / "container.log").open("ab") as fh:

                def first(case: str, y_hat: np.ndarray, seconds: float) -> bool:
                    runs[0][case] = y_hat
                    return True

                def second(case: str, y_hat: np.ndarray, seconds: float) -> bool:
                    runs[1][case], times[case] = y_hat, seconds
                    return True

                results.append(runner.run_container(image, inputs, first, fh, gpu, settings.cpuset))
                for ci in inputs:
                    results.append(runner.run_container(image, [ci], second, fh, gpu, settings.cpuset))
        finally:
            runner.release(image)
    report = CheckReport(image=image, cases=len(inputs) + len(no_mask) + len(refused))
    if tarball is not None:
        problems = naming_problems(tarball, image.tags, settings.task)
        report.add("image name", not problems, "; ".join(problems) or f"loads as {tarball_image(tarball)}")
    _judge_command(report, image, settings, present, results)
    _judge_runs(report, settings, [ci.case for ci in inputs], no_mask, refused, runs, times, results)
    return report


def tarball_image(tarball: Path) -> str:
    return f"{reference_name(tarball)}:latest, the image the reference runner starts"


def _script_path(image: TeamImage, settings: RunSettings) -> str:
    script = load_benchmark().section("container")["entrypoint"][settings.task].split()[-1]
    return posixpath.join(image.workdir or "/", script)


def _judge_command(
    report: CheckReport,
    image: TeamImage,
    settings: RunSettings,
    present: dict[str, bool],
    results: list[ContainerResult],
) -> None:
    """Can the reference command start, and does the script need what only an older ctfm gave it?"""
    contract = load_benchmark().section("container")
    command = f'{" ".join(contract["shell"])} "{contract["entrypoint"][settings.task]}"'
    problems = []
    if not present.get("/bin/bash"):
        problems.append(f"the image has no /bin/bash: the reference command {command} cannot start")
    script = _script_path(image, settings)
    if not present.get(script):
        problems.append(f"no {posixpath.basename(script)} in the image's working directory {image.workdir}")
    defined = {e.split("=", 1)[0] for e in image.env}
    failed_logs = " ".join(r.log_tail for r in results if r.exit_code not in (0, None) or r.invalid)
    needed = sorted(set(CTFM_ONLY_VARIABLES.findall(failed_logs)) - defined)
    if needed:
        problems.append(
            f"the container reads ${', $'.join(needed)}, which the reference runner does not set (it sets only "
            f"MASKS_DIR): use the fixed paths {contract['input_dir']} and {contract['output_dir']}"
        )
    where = image.workdir or "/"
    report.add("reference command", not problems, "; ".join(problems) or f"{command} in {where}")


def _judge_runs(
    report: CheckReport,
    settings: RunSettings,
    cases: list[str],
    no_mask: dict[str, str],
    refused: dict[str, str],
    runs: list[dict[str, Any]],
    times: dict[str, float],
    results: list[ContainerResult],
) -> None:
    bad_exit = [
        f"{r.name}: {r.exit_reason(settings.memory)}"
        for r in results
        if (r.exit_code != 0 or r.error) and not r.timed_out
    ]
    problems = bad_exit + [f"timeout on {', '.join(r.cases)}" for r in results if r.timed_out]
    if no_mask:
        problems.append(f"no mask for {', '.join(sorted(no_mask))}")
    problems += [f"not run: {why}" for why in refused.values()]
    stray = sorted({n for r in results for n in r.stray})
    note = f"; stray files (reported, not stored, as by extract): {', '.join(stray[:5])}" if stray else ""
    report.add("contract", not problems, ("; ".join(problems) or "exit 0, no timeout") + note)
    invalid = {c: why for r in results for c, why in r.invalid.items()}
    missing = [c for c in cases if c not in invalid and (c not in runs[0] or c not in runs[1])]
    detail = "; ".join(
        [f"{c}: {w}" for c, w in sorted(invalid.items())] + [f"{c}: no output" for c in missing]
    )
    report.add("outputs valid", not invalid and not missing, detail or f"{len(cases)} cases x 2 runs valid")
    arrays = runs[0]
    dims = sorted({int(a.shape[0]) for a in arrays.values()})
    none = "no valid output to judge"
    sizes = f"D = {dims[0]}" if len(dims) == 1 else f"D values {', '.join(map(str, dims))}" if dims else none
    heads_ok = settings.task != "eao" or all(d % EAO_HEADS == 0 for d in dims)
    if not heads_ok:
        sizes += f"; the reference EAO head ({EAO_HEADS} attention heads) needs D divisible by {EAO_HEADS}"
    report.add("one feature size", len(dims) == 1 and heads_ok, sizes)
    degenerate = embedding_problems(arrays) if arrays else [none]
    report.add(
        "embeddings informative", not degenerate, "; ".join(degenerate) or "not constant, not collapsed"
    )
    diffs = {}
    for c in cases:
        a, b = runs[0].get(c), runs[1].get(c)
        if a is not None and b is not None:
            diffs[c] = float(np.max(np.abs(a.astype(np.float64) - b))) if a.shape == b.shape else float("inf")
    same = all(
        runs[0][c].shape == runs[1][c].shape and np.allclose(runs[0][c], runs[1][c], rtol=1e-5, atol=1e-6)
        for c in diffs
    )
    worst = max(diffs.values(), default=0.0)
    report.add(
        "deterministic", bool(diffs) and same, f"max |run1 - run2| = {worst:.3g} over {len(diffs)} cases"
    )
    if times:
        report.seconds_per_case = max(times.values())
        report.add(
            "time per case",
            report.seconds_per_case <= settings.timeout_per_case,
            f"max {report.seconds_per_case:.2f} s (one container per case, start-up included) "
            f"vs limit {settings.timeout_per_case:g} s",
        )
    peaks = [r.peak_memory for r in results if r.peak_memory]
    report.peak_memory = max(peaks) if peaks else None
    oom = [r.name for r in results if r.oom_killed]
    report.add(
        "peak memory",
        not oom and (report.peak_memory is None or report.peak_memory <= parse_bytes(settings.memory)),
        (f"out of memory in {len(oom)} run(s); " if oom else "")
        + ("not measured (runs too short)" if report.peak_memory is None else human_bytes(report.peak_memory))
        + f" vs limit {settings.memory}",
    )
