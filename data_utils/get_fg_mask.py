"""Foreground masks with the reference script's flags, built by ``ctfm.masks`` (same as ``ctfm masks``).

    python data_utils/get_fg_mask.py --csv-dir labels/ --labels-dir totalseg/ --output-dir fg_masks/ --num-workers 4

``--csv-dir``: the ``<disease>.csv`` label files (every ROI disease with a CSV is built, for the cases it lists);
``--labels-dir``: the TotalSegmentator label maps; ``--output-dir``: receives ``<disease>/<case>.nii.gz`` and
``masks_report.csv``; ``--num-workers``: parallel processes. Exit status 1 when any case failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import ctfm  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv-dir", type=Path, required=True, help="folder of <disease>.csv label files")
    parser.add_argument("--labels-dir", type=Path, required=True, help="TotalSegmentator label maps")
    parser.add_argument("--output-dir", type=Path, required=True, help="writes <disease>/<case>.nii.gz")
    parser.add_argument("--num-workers", type=int, default=4, help="parallel worker processes")
    parser.add_argument("--margin-mm", type=float, default=0.0, help="dilate masks by this many mm")
    parser.add_argument("--force", action="store_true", help="rebuild masks that are up to date")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from ctfm.cli.progress import BarProgress
    from ctfm.core.errors import CtfmError
    from ctfm.masks import build_masks, cases_from_labels

    args = parse_args(argv)
    try:
        report = build_masks(
            args.labels_dir,
            args.output_dir,
            cases=cases_from_labels(args.csv_dir),
            workers=max(1, args.num_workers),
            margin_mm=args.margin_mm,
            force=args.force,
            progress=BarProgress(),  # drawn only on a terminal
        )
    except CtfmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{status} {n}" for status, n in sorted(report.counts().items()))
    print(
        f"{report.written} masks written by {report.workers} worker(s), {report.skipped} up to date ({counts}); "
        f"report {report.path}"
    )
    for row in report.failed + report.flagged:
        print(f"{row.status}: {row.case} {row.disease}: {row.message}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
