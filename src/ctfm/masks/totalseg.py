"""Running TotalSegmentator for the images that lack a label map (an optional dependency)."""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Iterable
from pathlib import Path

from ctfm.core import nifti
from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import DataError
from ctfm.core.fsutil import atomic_path
from ctfm.masks.discovery import find_label_maps
from ctfm.masks.plan import check_diseases


def organs_needed(diseases: Iterable[str] | None = None) -> list[str]:
    bench = load_benchmark()
    return list(dict.fromkeys(o for d in check_diseases(diseases) for o in bench.roi_organs(d)))


def totalsegmentator_missing() -> str | None:
    """None when TotalSegmentator and its v2 ``total`` weights are installed, else one line saying what is not."""
    if importlib.util.find_spec("totalsegmentator") is None:
        return (
            "TotalSegmentator is not installed (pip install 'ctfm[totalseg]', then `totalseg_download_weights -t "
            "total`): no label maps were generated"
        )
    try:
        from totalsegmentator.config import get_weights_dir

        weights = Path(get_weights_dir())
    except Exception as exc:  # a broken install (e.g. a torch mismatch) must not stop the masks
        reason = (str(exc).splitlines() or [""])[0]
        return f"TotalSegmentator is installed but cannot be imported ({type(exc).__name__}: {reason})"
    # roi_subset needs the organ model (Dataset291) and the 3 mm model the robust crop runs first (Dataset297)
    have = {p.name[:10] for p in weights.glob("Dataset29*")} if weights.is_dir() else set()
    lacking = [d for d in ("Dataset291", "Dataset297") if d not in have]
    if lacking:
        return (
            f"TotalSegmentator weights {', '.join(lacking)} are missing in {weights} (run "
            "`totalseg_download_weights -t total` with network access): no label maps were generated"
        )
    return None


def run_totalsegmentator(
    images_dir: Path,
    totalseg_dir: Path,
    diseases: Iterable[str] | None = None,
    cases: Iterable[str] | None = None,
    device: str = "gpu",
) -> list[str]:
    """Segment the images lacking a label map in ``totalseg_dir`` (multilabel, v2 ids), asking only for the
    organs the diseases need with TotalSegmentator's robust crop. Returns the cases segmented; raises
    :class:`DataError` with :func:`totalsegmentator_missing`'s line when it cannot run."""
    missing = totalsegmentator_missing()
    if missing:
        raise DataError(missing)
    from totalsegmentator.python_api import totalsegmentator

    have = find_label_maps(totalseg_dir) if Path(totalseg_dir).is_dir() else {}
    wanted = {nifti.case_id(c) for c in cases} if cases is not None else None
    todo = [
        p
        for p in nifti.list_volumes(images_dir)
        if nifti.case_id(p) not in have and (wanted is None or nifti.case_id(p) in wanted)
    ]
    organs = organs_needed(diseases)
    params = inspect.signature(totalsegmentator).parameters
    subset = {"roi_subset_robust": organs} if "roi_subset_robust" in params else {"roi_subset": organs}
    done = []
    for image in todo:
        dest = Path(totalseg_dir) / f"{nifti.case_id(image)}{nifti.NII_SUFFIX}"
        with atomic_path(dest) as tmp:
            totalsegmentator(image, tmp, ml=True, task="total", device=device, quiet=True, **subset)
        done.append(nifti.case_id(image))
    return done
