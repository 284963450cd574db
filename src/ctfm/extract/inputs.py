"""Which cases an extraction runs on: the volumes of an images folder, a ``--cases`` subset, and each case's
mask in an ROI view. Shared by the in-process runner and the container runner so both read ``--cases`` alike."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import ConfigError, DataError, StoreError
from ctfm.core.fsutil import file_stamp
from ctfm.core.hashing import digest, sha256_file
from ctfm.core.nifti import (
    NII_SUFFIX,
    case_id,
    check_case,
    find_volume,
    list_volumes,
    odd_entries,
    refuse_duplicates,
)
from ctfm.store import FULL_VIEW, View


def read_case_list(value: str | None) -> list[str] | None:
    """``--cases``: a file with one case per line (``#`` comments), or a comma-separated list."""
    if not value:
        return None
    path = Path(value)
    if path.is_file():
        items = [line.strip() for line in path.read_text().splitlines()]
    else:
        items = [c.strip() for c in value.split(",")]
    return [c for c in items if c and not c.startswith("#")]


def select_cases(
    images: Path, cases: Iterable[str] | None = None
) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    """(case, image path), sorted, for every volume in ``images``, restricted to ``cases`` when given (names
    with or without ``.nii.gz``); and the cases that cannot run, with why: a name the store cannot hold, a
    folder or broken link named like a volume. Those fail alone; the others still run."""
    images = Path(images)
    volumes = list_volumes(images)
    refuse_duplicates(images, volumes)
    paths = {case_id(p): p for p in volumes}
    odd = {case: f"{path} {why}" for case, (path, why) in odd_entries(images).items() if case not in paths}
    names = set(paths) | set(odd)
    if not names:
        raise DataError(f"{images}: no {NII_SUFFIX} volumes")
    if cases is not None:
        wanted = {c.removesuffix(NII_SUFFIX).removesuffix(".nii") for c in cases}
        missing = sorted(wanted - names)
        if missing:
            raise DataError(f"{images}: no image for case(s) {', '.join(missing[:5])}")
        names = wanted
    selected, refused = [], {case: odd[case] for case in names & set(odd)}
    for case in sorted(names & set(paths)):
        try:
            selected.append((check_case(case), paths[case]))
        except StoreError as exc:
            refused[case] = f"{paths[case]}: {exc}; rename the file"
    return selected, dict(sorted(refused.items()))


def mask_of(mask_dir: Path, image: Path) -> tuple[Path, str | None]:
    """A case's mask in ``mask_dir`` (``<case>.nii.gz``, else ``.nii``) and, when it is missing, the error its
    case is recorded with."""
    case = case_id(image)
    mask = find_volume(mask_dir, case)
    if mask is not None:
        return mask, None
    mask = Path(mask_dir) / f"{case}{NII_SUFFIX}"
    return mask, f"no mask {mask} (masks are required for an ROI view; run `ctfm masks`)"


def case_inputs(image: Path, mask: Path | None, settings: str) -> str:
    """Digest of what a case's embedding is made from: its image's and mask's stamps and the run's
    ``settings``. A stored case whose digest differs is checked by content (:func:`is_current`)."""
    return digest([file_stamp(image), file_stamp(mask) if mask is not None else None, settings])


def is_current(
    view: View,
    case: str,
    image: Path,
    mask: Path | None,
    settings: str,
    hash_file: Callable[[Path], str] = sha256_file,
) -> bool:
    """True when the view holds ``case`` made from these files and ``settings``.

    Quick when the files' stamps (size, mtime) are the recorded ones. Otherwise the files' content is compared
    with the hashes recorded at extraction: a dataset copied elsewhere, touched, or masks rebuilt identically
    are not extracted again (the case is restamped, so the next check is quick); changed content is.
    ``hash_file`` may be memoised by a caller checking one image for several views.
    """
    inputs = case_inputs(image, mask, settings)
    if view.is_done(case, inputs):
        return True
    rec = view.record(case)
    if rec is None or not rec.settings or rec.settings != settings or not view.is_done(case):
        return False
    if rec.image_sha256 != hash_file(image) or rec.mask_sha256 != (hash_file(mask) if mask else ""):
        return False
    view.restamp(case, inputs)
    return True


def resolve_mask_dir(masks: Path, disease: str) -> Path:
    """``--masks`` is ``fg_masks/<disease>`` or the ``fg_masks`` root (then ``<disease>/`` inside is used)."""
    masks = Path(masks)
    if (masks / disease).is_dir():
        return masks / disease
    if masks.is_dir():
        if masks.name == disease or not any(p.is_dir() for p in masks.iterdir()):
            return masks
        raise DataError(f"{masks}: has no {disease}/ folder; pass fg_masks/{disease} or the fg_masks root")
    raise DataError(f"{masks}: mask folder not found")


def resolve_view(masks: Path | None, disease: str | None) -> tuple[str, Path | None]:
    """(view name, mask folder). No masks: view ``full``; masks need an ROI disease."""
    bench = load_benchmark()
    if masks is None:
        if disease is not None and bench.is_roi(disease):
            raise ConfigError(f"{disease} is an ROI disease: pass --masks fg_masks (or fg_masks/{disease})")
        return FULL_VIEW, None
    if disease is None:
        disease = Path(masks).name
        if disease not in bench.roi_diseases:
            raise ConfigError(
                "--masks needs --disease NAME (an ROI disease) unless the folder is named after it"
            )
    if not bench.is_roi(disease):
        raise ConfigError(f"{disease} is a whole-scan disease: extract it without --masks (view full)")
    return disease, resolve_mask_dir(masks, disease)
