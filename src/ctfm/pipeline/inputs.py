"""The first two stages of ``ctfm run``: the benchmark data (a user's folder or a synthetic one) and the masks."""

from __future__ import annotations

import logging
from pathlib import Path

from ctfm.core.errors import DataError
from ctfm.core.fsutil import file_stamp
from ctfm.core.hashing import digest
from ctfm.pipeline.stages import RunContext, Stage

logger = logging.getLogger(__name__)


def _content_stamps(root: Path) -> list[tuple[str, int, int]]:
    """Stamps of a user's benchmark folder (labels, images, label maps): an edited label or a replaced
    volume changes the data key, so every later stage looks again (and redoes only what changed)."""
    files = [
        f for sub in ("labels", "images", "totalseg") for f in sorted((root / sub).rglob("*")) if f.is_file()
    ]
    return [(str(f.relative_to(root)), *file_stamp(f)[1:]) for f in files]


def data_stage(ctx: RunContext) -> Stage:
    synth = ctx.cfg.data.synth
    if synth is None:
        path = ctx.data_root

        def check() -> str:
            if not (path / "images").is_dir() or not (path / "labels").is_dir():
                raise DataError(f"{path}: not a benchmark folder (needs images/ and labels/)")
            return f"using {path}"

        return Stage("data", digest(["path", str(path), _content_stamps(path)]), check)

    from ctfm.data.synth import SYNTH_VERSION, generate_benchmark

    def generate() -> str:
        generate_benchmark(
            ctx.data_root, synth.cases, synth.seed, synth.shape, workers=2, progress=ctx.progress
        )
        return f"synthetic benchmark: {synth.cases} cases (seed {synth.seed}) in {ctx.data_root}"

    return Stage("data", digest(["synth", synth, SYNTH_VERSION]), generate)  # new generator: new cases


def masks_stage(ctx: RunContext, data_key: str) -> Stage:
    margin = ctx.cfg.masks.margin_mm

    def build() -> str:
        from ctfm.masks import build_masks, cases_from_labels

        totalseg = ctx.data_root / "totalseg"
        if not totalseg.is_dir():
            raise DataError(f"{totalseg}: no TotalSegmentator label maps to build masks from")
        report = build_masks(
            totalseg,
            ctx.masks_root,
            diseases=ctx.roi,
            cases=cases_from_labels(ctx.data_root / "labels", ctx.roi),
            workers=2,
            margin_mm=margin,
            progress=ctx.progress,
        )
        counts = report.counts()
        if report.failed or report.flagged:
            logger.warning(
                "masks: %d failed, %d flagged row(s), see %s",
                len(report.failed),
                len(report.flagged),
                report.path,
            )
        return "masks: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))

    return Stage("masks", digest([data_key, ctx.roi, margin]), build)
