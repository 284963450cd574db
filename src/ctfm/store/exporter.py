"""``ctfm store export``: a model's embeddings laid out as the reference trainers and inference scripts read
them, ``<out>/<disease>/embeddings/<case>.h5`` (hard links to the store's files) with the timing CSV."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ctfm.core.errors import StoreError
from ctfm.core.fsutil import exclusive_use, link_or_copy, write_text_atomic
from ctfm.store.layout import EMBEDDINGS, check_task, sanitize_name
from ctfm.store.timing import timing_csv_name
from ctfm.store.view import Store, View

EXPORT_MANIFEST = ".ctfm-export.json"  # in an export root: which model it holds and the files ctfm put there


@dataclass
class DiseaseExport:
    """One disease folder of an export: ``<root>/<disease>/embeddings``."""

    disease: str
    view: str
    folder: Path
    exported: int = 0  # ok cases now in the folder
    placed: int = 0  # of those, linked or copied by this run (the rest were there already)
    removed: int = 0  # files of cases no longer ok, removed
    # why not exported (failed, timeout, file missing) -> cases
    skipped: dict[str, list[str]] = field(default_factory=dict)
    timing_csv: Path | None = None


@dataclass
class ExportReport:
    """What :func:`export_reference` did; ``copied`` files are copies because hard links were impossible."""

    root: Path
    diseases: list[DiseaseExport] = field(default_factory=list)
    linked: int = 0
    copied: int = 0
    copied_bytes: int = 0
    copy_reason: str = ""
    absent: list[str] = field(default_factory=list)  # diseases the store has no view for


def export_reference(
    store: Store,
    model: str,
    task: str,
    out: Path,
    diseases: Iterable[str] | None = None,
    image: str | None = None,
) -> ExportReport:
    """Lay ``model``'s ``task`` embeddings out as the reference trainers and inference scripts read them.

    ``<out>/<disease>/embeddings/<case>.h5`` for every disease, whole-scan ones from the ``full`` view, as hard
    links to the store's files (copies where the file system refuses links: see ``copy_reason``), and the
    reference timing CSV ``<image>_feature_extraction_time.csv`` beside them. Only ok cases are exported; the
    others are counted in ``skipped``. Rerunning brings the folder up to date: files already in place are kept,
    files of cases no longer ok are removed. Files that an export did not put there are never overwritten:
    they are refused before anything changes. ``diseases`` defaults to every AMOS disease with a view.
    """
    from ctfm.core.benchmark import load_benchmark

    check_task(task)
    store.check_model(model, task)
    bench = load_benchmark()
    out = Path(out)
    report = ExportReport(root=out)
    sources: list[tuple[str, View]] = []
    for disease in bench.diseases if diseases is None else dict.fromkeys(diseases):
        view = store.view(model, task, bench.view_of(bench.check_disease(disease)))
        if view.manifest_path.is_file():
            sources.append((disease, view))
        elif diseases is None:
            report.absent.append(disease)
        else:
            raise StoreError(f"{store.root}: model {model!r} has no {task} view {view.view!r} for {disease}")
    if not sources:
        raise StoreError(f"{store.root}: model {model!r} has no {task} view of any AMOS disease; name them")
    with exclusive_use(out):  # a second export into the same folder is refused
        owned = _read_export_manifest(out, sources[0][1])
        plans = [_plan_disease(disease, view, image) for disease, view in sources]
        _refuse_foreign_files(out, plans, owned)
        planned = {rel: checksum for plan in plans for rel, (_, checksum) in plan.files.items()}
        # intent first, so a killed run's files count as its own; content is known only once placed
        _write_export_manifest(out, sources[0][1], {**dict.fromkeys(planned, ""), **owned})
        for plan in plans:
            report.diseases.append(_place_disease(out, plan, owned, report))
            for rel in [r for r in owned if r.startswith(f"{plan.disease}/") and r not in plan.files]:
                with contextlib.suppress(FileNotFoundError):
                    (out / rel).unlink()
                    report.diseases[-1].removed += int(rel.endswith(".h5"))
                del owned[rel]
        _write_export_manifest(out, sources[0][1], {**owned, **planned})
    if report.copied:
        report.copy_reason = _copy_reason(store.root, out)
    return report


@dataclass
class _DiseasePlan:
    disease: str
    view: View
    image: str
    # path under the export root -> (store file, its checksum); no store file: the timing CSV
    files: dict[str, tuple[Path | None, str]]
    skipped: dict[str, list[str]]


def _plan_disease(disease: str, view: View, image: str | None) -> _DiseasePlan:
    folder = f"{disease}/{EMBEDDINGS}"
    files: dict[str, tuple[Path | None, str]] = {}
    skipped: dict[str, list[str]] = {}
    for case, rec in sorted(view.records().items()):
        if rec.status != "ok":
            skipped.setdefault(rec.status, []).append(case)
        elif not (view.dir / rec.file).is_file():
            skipped.setdefault("file missing", []).append(case)
        else:
            files[f"{folder}/{case}.h5"] = (view.dir / rec.file, rec.checksum)
    name = image or view.image_name
    files[f"{folder}/{timing_csv_name(name)}"] = (None, "")
    return _DiseasePlan(disease, view, name, files, skipped)


def _read_export_manifest(out: Path, view: View) -> dict[str, str]:
    """Files an earlier export of the same model and task put under ``out`` (path -> checksum)."""
    path = out / EXPORT_MANIFEST
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
        owner, task, files = meta["model"], meta["task"], dict(meta["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(
            f"{path}: unreadable export record ({exc}); remove it or choose another --out"
        ) from None
    if (sanitize_name(owner), task) != (view.model, view.task):
        raise StoreError(
            f"{out} holds the {task} export of model {owner!r}; export {view.name!r} into another folder"
        )
    return {str(k): str(v) for k, v in files.items()}


def _write_export_manifest(out: Path, view: View, files: dict[str, str]) -> None:
    meta = {"model": view.name, "task": view.task, "files": dict(sorted(files.items()))}
    write_text_atomic(out / EXPORT_MANIFEST, json.dumps(meta, indent=1) + "\n")


def _refuse_foreign_files(out: Path, plans: list[_DiseasePlan], owned: dict[str, str]) -> None:
    """Refuse, before changing anything, to overwrite a file that no export of this model put there."""
    foreign = []
    for plan in plans:
        for rel, (src, _) in plan.files.items():
            dest = out / rel
            if rel in owned or not (dest.exists() or dest.is_symlink()):
                continue
            if src is None or not dest.is_file() or not os.path.samefile(src, dest):
                foreign.append(rel)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise StoreError(
            f"{out}: {', '.join(foreign[:3])}{more} already exist and were not exported by ctfm; "
            "move them away or choose another --out (nothing was changed)"
        )


def _place_disease(
    out: Path, plan: _DiseasePlan, owned: dict[str, str], report: ExportReport
) -> DiseaseExport:
    """Link (or copy) a disease's files into place and write its timing CSV."""
    done = DiseaseExport(plan.disease, plan.view.view, out / plan.disease / EMBEDDINGS, skipped=plan.skipped)
    for rel, (src, checksum) in plan.files.items():
        dest = out / rel
        if src is None:
            done.timing_csv = plan.view.write_timing_csv(plan.image, dest.parent)
            continue
        done.exported += 1
        if _in_place(src, dest, checksum, owned.get(rel)):
            continue
        done.placed += 1
        if link_or_copy(src, dest):
            report.linked += 1
        else:
            report.copied += 1
            report.copied_bytes += dest.stat().st_size
    return done


def _in_place(src: Path, dest: Path, checksum: str, exported: str | None) -> bool:
    """Whether ``dest`` already holds the stored file: the same file (a hard link), or a copy an earlier
    export made of a file with the same checksum and size."""
    try:
        if os.path.samefile(src, dest):
            return True
        return exported == checksum != "" and dest.stat().st_size == src.stat().st_size
    except FileNotFoundError:
        return False


def _copy_reason(store_root: Path, out: Path) -> str:
    if os.stat(store_root).st_dev != os.stat(out).st_dev:
        return f"{out} is on another file system than the store {store_root}, where hard links cannot reach"
    return f"the file system of {out} refused hard links"
