"""A view: one (model, task, view) folder of the store, its cases and their records; the store's root.

Embeddings are written to a temporary file and renamed, and the manifest row is appended only after the
rename, so an interrupted write never leaves a partial case.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ctfm.core.errors import InvalidEmbedding, StoreError
from ctfm.core.fsutil import ABANDONED_S, remove_partials, write_text_atomic
from ctfm.core.hashing import sha256_file
from ctfm.core.nifti import check_case
from ctfm.store.h5 import read_y_hat, write_y_hat
from ctfm.store.layout import (
    EMBEDDINGS,
    MANIFEST,
    MODEL_NAME,
    PACKED,
    STATUSES,
    check_task,
    check_view,
    sanitize_name,
)
from ctfm.store.manifest import CaseRecord, Manifest
from ctfm.store.packed import (
    PACK_DTYPES,
    PackedEAO,
    PackedLP,
    load_packed,
    read_meta,
    write_meta,
    write_packed,
)
from ctfm.store.timing import timing_csv_name, write_timing_csv
from ctfm.store.untrusted import H5Reader, validate_y_hat


class _DamagedCase(Exception):
    """A stored file that no longer matches its checksum, found while packing (its case is left out)."""

    def __init__(self, case: str) -> None:
        super().__init__(case)
        self.case = case


class View:
    """One (model, task, view) folder. Cheap to create; reads the manifest lazily and incrementally."""

    def __init__(self, store_root: Path, model: str, task: str, view: str) -> None:
        self.name = str(model).strip()
        self.model = sanitize_name(model)
        self.task = check_task(task)
        self.view = check_view(view)
        self.dir = Path(store_root) / self.model / self.task / self.view
        self.embeddings_dir = self.dir / EMBEDDINGS
        self.manifest_path = self.dir / MANIFEST
        self.packed_dir = self.dir / PACKED
        self._manifest = Manifest(self.manifest_path)
        self._claimed = False

    def __repr__(self) -> str:
        return f"View({self.model}/{self.task}/{self.view})"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.task, self.view)

    @property
    def lock_dir(self) -> Path:
        """The folder a writer holds (``exclusive_use``) while it writes this view (a shard: its own)."""
        return self.dir

    def case_path(self, case: str) -> Path:
        return self.embeddings_dir / f"{check_case(case)}.h5"

    # -- manifest -------------------------------------------------------------------------------------
    def _claim_model_folder(self) -> None:
        """Record the model name that owns the model folder on its first write; refuse another name that
        sanitises to the same folder (``team a`` and ``team_a``), which would overwrite its embeddings."""
        if self._claimed:
            return
        path = self.dir.parents[1] / MODEL_NAME
        try:
            owner = json.loads(path.read_text())["name"]
        except FileNotFoundError:
            write_text_atomic(path, json.dumps({"name": self.name}) + "\n")
            owner = self.name
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"{path}: unreadable ({exc}); it names the model that owns this folder"
            ) from None
        if owner != self.name:
            raise StoreError(
                f"model name {self.name!r} maps to the store folder {self.model!r} of model {owner!r}; "
                "choose a name that differs in letters or digits"
            )
        self._claimed = True

    def _writable_path(self, case: str) -> Path:
        """The case's file path, once this model name owns the folder (checked before any file changes)."""
        self._claim_model_folder()
        return self.case_path(case)

    def _append(self, record: CaseRecord) -> None:
        if record.status not in STATUSES:
            raise StoreError(f"unknown status {record.status!r}; use one of {', '.join(STATUSES)}")
        self._claim_model_folder()
        record.written_at = time.time()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._manifest.append(record)

    def records(self) -> dict[str, CaseRecord]:
        """Latest record of every case in the manifest."""
        return dict(self._manifest.latest())

    def record(self, case: str) -> CaseRecord | None:
        return self._manifest.latest().get(case)

    def cases(self, status: str | None = "ok") -> list[str]:
        """Sorted case names with this status (``None``: all). ok cases must also have their file."""
        out = []
        for case, rec in self._manifest.latest().items():
            if status is not None and rec.status != status:
                continue
            if rec.status == "ok" and status == "ok" and not (self.dir / rec.file).is_file():
                continue
            out.append(case)
        return sorted(out)

    def remove_abandoned(self) -> None:
        """Delete temporaries (embeddings, packed arrays) a killed run left long ago; a live run's are kept."""
        if self.dir.is_dir():
            remove_partials(self.dir, older_than=ABANDONED_S)

    def is_done(self, case: str, inputs: str | None = None) -> bool:
        """True when the case is ok, its file is present and (when given) it was made from ``inputs``:
        resumable runners skip it."""
        rec = self.record(case)
        return (
            rec is not None
            and rec.status == "ok"
            and (inputs is None or rec.inputs == inputs)
            and (self.dir / rec.file).is_file()
        )

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for rec in self._manifest.latest().values():
            counts[rec.status] = counts.get(rec.status, 0) + 1
        return counts

    def manifest_checksum(self, cases: Iterable[str] | None = None) -> str:
        """See :meth:`Manifest.checksum`: what the view holds (for ``cases``), not when or how fast."""
        return self._manifest.checksum(cases)

    # -- cases ----------------------------------------------------------------------------------------
    def feature_dim(self, exclude: str | None = None) -> int | None:
        """D of the view's ok cases (first dimension of y_hat), or None while it has none."""
        for case, rec in self._manifest.latest().items():
            if rec.status == "ok" and rec.shape and case != exclude:
                return int(rec.shape[0])
        return None

    def _check_consistent(self, case: str, arr: np.ndarray) -> None:
        dim = self.feature_dim(exclude=case)
        if dim is not None and int(arr.shape[0]) != dim:
            raise StoreError(
                f"{case}: y_hat has D={arr.shape[0]} but {self} holds D={dim}; "
                "use another --model name for a different model"
            )

    def write_case(self, case: str, y_hat: np.ndarray, record: CaseRecord | None = None) -> CaseRecord:
        """Validate and store one case: atomic ``.h5`` first, then the manifest row (status ok)."""
        check_case(case)
        arr = np.asarray(y_hat)
        validate_y_hat(arr, self.task)
        self._check_consistent(case, arr)
        path = self._writable_path(case)
        write_y_hat(path, arr)
        return self._record_ok(case, path, arr, record)

    def _record_ok(self, case: str, path: Path, arr: np.ndarray, record: CaseRecord | None) -> CaseRecord:
        """The manifest row of a case whose file was just written: the caller's record (if any), completed."""
        rec = dataclasses.replace(record) if record is not None else CaseRecord(case=case, status="ok")
        rec.case, rec.status, rec.error = case, "ok", ""
        rec.file = str(path.relative_to(self.dir))
        rec.shape, rec.dtype = tuple(int(s) for s in arr.shape), str(arr.dtype)
        rec.checksum = sha256_file(path)
        self._append(rec)
        return rec

    def retime(self, case: str, seconds: float) -> CaseRecord:
        """Correct a stored case's extraction time."""
        return self._amend(case, "retime", seconds=round(float(seconds), 4))

    def restamp(self, case: str, inputs: str) -> CaseRecord:
        """Record new input stamps for a stored case whose inputs were found unchanged in content (a copy or
        a touch), so the next run's check is quick again."""
        return self._amend(case, "restamp", inputs=inputs)

    def _amend(self, case: str, what: str, **changes: Any) -> CaseRecord:
        """A new manifest row for a stored case with ``changes``; its file is untouched."""
        current = self.record(case)
        if current is None or current.status != "ok":
            raise StoreError(f"{case}: no stored embedding to {what} in {self}")
        rec = dataclasses.replace(current, **changes)
        self._append(rec)
        return rec

    def record_failure(self, case: str, status: str = "failed", error: str = "", **fields: Any) -> CaseRecord:
        """Record a failed or timed-out case; an older embedding file of the case is removed."""
        check_case(case)
        if status not in ("failed", "timeout"):
            raise StoreError(f"record_failure needs status failed or timeout, not {status!r}")
        rec = CaseRecord(case=case, status=status, error=error, **fields)
        with contextlib.suppress(FileNotFoundError):
            self._writable_path(case).unlink()
        self._append(rec)
        return rec

    def import_file(
        self, case: str, h5_path: Path, record: CaseRecord | None = None, reader: H5Reader | None = None
    ) -> CaseRecord:
        """Store the ``y_hat`` of a reference-format ``<case>.h5`` from elsewhere, status ok, in the store's own
        file (never the file's layout). The file is read as untrusted: staged, layout-checked and read in a
        child process with a deadline (``reader``, else one for this file alone).

        A bad file raises :class:`StoreError` naming it; callers record it with :meth:`record_failure`.
        """
        check_case(case)
        with contextlib.ExitStack() as stack:
            if reader is None:
                reader = stack.enter_context(H5Reader())
            try:
                arr = reader.read_file(Path(h5_path), self.task)
            except InvalidEmbedding as exc:
                raise InvalidEmbedding(f"{h5_path}: {exc}") from None
        return self.write_case(case, arr, record)

    def read_case(self, case: str) -> np.ndarray:
        rec = self.record(case)
        if rec is None or rec.status != "ok":
            state = "absent" if rec is None else f"{rec.status}: {rec.error}"
            raise StoreError(f"{self}: case {case!r} has no embedding ({state})")
        return read_y_hat(self.dir / rec.file)

    # -- packed arrays ---------------------------------------------------------------------------------
    def packed(self, dtype: str = "float32") -> PackedLP | PackedEAO:
        """All ok cases as one contiguous memory-mapped array, cached under ``packed/``.

        The cache records the manifest checksum and is rebuilt only when it differs.
        """
        if dtype not in PACK_DTYPES:
            raise StoreError(f"unknown packed dtype {dtype!r}; use one of {', '.join(PACK_DTYPES)}")
        checksum = self.manifest_checksum()
        meta_path = self.packed_dir / f"{self.task}-{dtype}.json"
        meta = read_meta(self.packed_dir, meta_path)
        if meta is None or meta.get("checksum") != checksum:
            meta = self._build_packed(dtype, checksum, meta_path)
        return load_packed(self.packed_dir, meta)

    def _build_packed(self, dtype: str, checksum: str, meta_path: Path) -> dict[str, Any]:
        cases = self.cases("ok")
        if not cases:
            raise StoreError(f"{self}: no ok cases to pack (run `ctfm extract` or `ctfm store import`)")
        damaged: list[str] = []
        while True:  # a file damaged after it was stored: that case is left out and says why, the rest packs
            shapes = [tuple(self.record(c).shape) for c in cases]  # type: ignore[union-attr]
            arrays = (self._read_packable(c, shape) for c, shape in zip(cases, shapes, strict=True))
            stem = f"{meta_path.stem}-{checksum[:16]}"
            try:
                files, extra = write_packed(
                    self.packed_dir, stem, self.task, dtype, arrays, shapes, str(self)
                )
                break
            except _DamagedCase as exc:
                damaged.append(exc.case)
                cases = [c for c in cases if c != exc.case]
                checksum = self.manifest_checksum()
                if not cases:
                    raise StoreError(
                        f"{self}: no readable ok case to pack; re-extract {', '.join(damaged[:5])}"
                    ) from None
        meta = {
            "checksum": checksum,
            "dtype": dtype,
            "task": self.task,
            "cases": cases,
            "files": files,
            **extra,
        }
        write_meta(meta_path, meta)
        return meta

    def _read_packable(self, case: str, shape: tuple[int, ...]) -> np.ndarray:
        """A case's stored array; a damaged file (checksum changed) is recorded failed and raised as such."""
        try:
            arr = self.read_case(case)
            if arr.shape != shape:
                raise StoreError(f"{self}: {case}: stored array {arr.shape} differs from its record {shape}")
            return arr
        except StoreError as exc:
            if not self._damaged(case):
                raise  # a locked, unreachable or unreadable-for-now file: nothing to record
            error = f"stored file unreadable ({exc}); its checksum changed: re-extract it"
            self._append(CaseRecord(case=case, status="failed", error=error))
            raise _DamagedCase(case) from exc

    def _damaged(self, case: str) -> bool:
        """Whether an ok case's file no longer has the checksum it was stored with."""
        rec = self.record(case)
        return rec is not None and bool(rec.checksum) and sha256_file(self.dir / rec.file) != rec.checksum

    # -- reference files --------------------------------------------------------------------------------
    @property
    def image_name(self) -> str:
        """The reference image name of this model and task: a ``<model>_<task>.tar.gz`` tarball's name."""
        return f"{self.model}_{self.task}".lower()

    def write_timing_csv(self, image: str | None = None, out_dir: Path | None = None) -> Path:
        """The reference ``<image>_feature_extraction_time.csv`` (``image`` is the team image's name, the
        tarball's name without ``.tar.gz``; default :attr:`image_name`), written in ``out_dir`` (default: the
        view folder). One row per attempted case in case order: like the reference runner, ``CaseName`` is the
        image file name (``<case>.nii.gz``) and failed and timed-out cases are listed with the seconds they used.
        """
        path = Path(out_dir or self.dir) / timing_csv_name(image or self.image_name)
        return write_timing_csv(path, {case: rec.seconds for case, rec in self.records().items()})


class Store:
    """The root of an embedding store. Views are created on first write."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def view(self, model: str, task: str, view: str) -> View:
        return View(self.root, model, task, view)

    def views(self) -> list[View]:
        """Every view that has a manifest, sorted by (model, task, view)."""
        if not self.root.is_dir():
            return []
        found = []
        for manifest in sorted(self.root.glob(f"*/*/*/{MANIFEST}")):
            model, task, view = manifest.parent.relative_to(self.root).parts
            with contextlib.suppress(StoreError):
                found.append(View(self.root, model, task, view))
        return found

    def models(self, task: str) -> list[str]:
        """Models with at least one view of ``task`` (sorted)."""
        return sorted({v.model for v in self.views() if v.task == task})

    def check_model(self, model: str, task: str) -> None:
        """Refuse a model the store has no ``task`` embeddings of, naming the ones it has (one line for a
        mistyped ``--model``, instead of one failure per disease)."""
        known = self.models(task)
        if sanitize_name(model) in known:
            return
        have = f"it has {task} embeddings of {', '.join(known)}" if known else f"it has no {task} embeddings"
        raise StoreError(
            f"{self.root}: no {task} embeddings of model {model!r}; {have} "
            "(run `ctfm extract` or `ctfm store import` first)"
        )
