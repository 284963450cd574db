"""THE embedding store: one folder per (model, task, view), one ``<case>.h5`` per case, one manifest.

Layout (nothing else in ctfm builds these paths)::

    <root>/<model>/<task>/<view>/
        embeddings/<case>.h5      dataset ``y_hat`` exactly as the reference tools read it
        manifest.jsonl            append-only, one JSON CaseRecord per line; the last line of a case wins
        packed/                   contiguous memory-mapped arrays rebuilt only when the manifest changes
        <image>_feature_extraction_time.csv   reference timing file (image: the team tarball's name, acme_lp)

:func:`export_reference` lays a model out as the reference trainers read it, ``<out>/<disease>/embeddings/
<case>.h5`` (hard links to these files), and :func:`import_folder` brings such a folder in, each file read as
untrusted (:mod:`ctfm.untrusted_h5`) and stored in the store's own file.

The manifest is append-only so a process killed mid-write leaves at most a torn last line, which is ignored
(and fenced off by a newline before the next append). Embeddings are written to a temporary file and renamed,
and the manifest row is appended only after the rename, so an interrupted write never leaves a partial case.

Example:
    >>> store = Store(Path("store"))  # doctest: +SKIP
    >>> view = store.view("my-model", "lp", "fatty_liver")  # doctest: +SKIP
    >>> view.write_case("synth_0000", np.zeros(16, np.float32), CaseRecord(case="synth_0000", status="ok"))  # doctest: +SKIP
    >>> view.packed().X.shape  # doctest: +SKIP
    (1, 16)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ctfm.errors import InvalidEmbedding, StoreError
from ctfm.fsutil import (
    ABANDONED_S,
    atomic_path,
    exclusive_use,
    link_or_copy,
    remove_partials,
    sha256_file,
    write_text_atomic,
)
from ctfm.untrusted_h5 import DATASET, H5Reader, inspect_y_hat, validate_y_hat

TASKS = ("lp", "eao")
STATUSES = ("ok", "failed", "timeout")
FULL_VIEW = "full"
MANIFEST = "manifest.jsonl"
EMBEDDINGS = "embeddings"
PACKED = "packed"
MODEL_NAME = "model.json"  # in the model folder: the name that owns it
PACK_DTYPES = ("float32", "float16", "bfloat16")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CASE_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def sanitize_name(name: str) -> str:
    """A model name as a safe folder name: runs of other characters become ``_``, no leading dots."""
    clean = _SAFE.sub("_", str(name).strip()).lstrip("._")
    if not clean:
        raise StoreError(f"model name {name!r} is empty after sanitising; use letters, digits, . _ -")
    return clean


def check_case(case: str) -> str:
    """Case names become file names: refuse anything that could escape the embeddings folder."""
    if not _CASE_OK.fullmatch(case) or ".." in case:
        raise StoreError(f"case name {case!r} is not a safe file name (letters, digits, . _ - only)")
    return case


def check_task(task: str) -> str:
    if task not in TASKS:
        raise StoreError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    return task


def check_view(view: str) -> str:
    """``full`` or an ROI disease (or a chest task); a whole-scan disease must use ``full``."""
    if view == FULL_VIEW:
        return view
    from ctfm.benchmark import load_benchmark

    bench = load_benchmark()
    if view in bench.roi_diseases or view in bench.chest_tasks:
        return view
    if view in bench.nonroi_diseases:
        raise StoreError(f"{view!r} is a whole-scan disease: its embeddings live in view {FULL_VIEW!r}")
    raise StoreError(
        f"unknown view {view!r}; use {FULL_VIEW!r} or an ROI disease: {', '.join(bench.roi_diseases)}"
    )


def read_y_hat(path: Path) -> np.ndarray:
    """Read dataset ``y_hat`` of a file this store wrote; an unreadable file raises :class:`StoreError`.

    Files from elsewhere go through :class:`ctfm.untrusted_h5.H5Reader` (:meth:`View.import_file`); the same
    layout checks guard the store's own files in case one was replaced.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as fh:
            return np.asarray(inspect_y_hat(fh)[()])
    except InvalidEmbedding as exc:
        raise StoreError(f"{path}: {exc}") from None
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:  # h5py on a broken file
        raise StoreError(f"{path}: not a readable HDF5 file ({type(exc).__name__}: {exc})") from exc


def write_y_hat(path: Path, arr: np.ndarray) -> None:
    """Write ``y_hat`` atomically in the reference format (one dataset, no compression)."""
    import h5py

    with atomic_path(Path(path), durable=True) as tmp, h5py.File(tmp, "w") as fh:
        fh.create_dataset(DATASET, data=arr)


class _DamagedCase(Exception):
    """A stored file that no longer matches its checksum, found while packing (its case is left out)."""

    def __init__(self, case: str) -> None:
        super().__init__(case)
        self.case = case


# how long, when and the files' stamps, not what was stored from what: left out of checksums
_NOT_CONTENT = ("seconds", "written_at", "inputs")


@dataclass
class CaseRecord:
    """One manifest row: what was stored for a case, how, and from which inputs."""

    case: str
    status: str
    file: str = ""
    shape: tuple[int, ...] = ()
    dtype: str = ""
    checksum: str = ""  # sha256 of the stored .h5 file
    seconds: float = 0.0
    error: str = ""
    image_sha256: str = ""
    spacing: tuple[float, ...] = ()  # source image, RAS mm
    origin: tuple[float, ...] = ()
    direction: tuple[float, ...] = ()  # 3x3 row-major
    crop_box_voxel: tuple[int, ...] = ()  # (x0, y0, z0, x1, y1, z1) in the resampled RAS grid, end exclusive
    crop_box_world: tuple[float, ...] = ()  # the same corners in world mm (RAS)
    mask_sha256: str = ""
    extractor: str = ""
    extractor_version: str = ""
    image_id: str = ""  # container image id (docker runner)
    inputs: str = ""  # digest of the input files' stamps and `settings`: unchanged, reused at once
    settings: str = ""  # digest of what else made it: extractor, weights, preprocessing, team image
    written_at: float = 0.0  # unix time the row was appended (added beyond the plan's contract)

    def to_json(self, exclude: tuple[str, ...] = ()) -> str:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in exclude}
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CaseRecord:
        names = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in names}
        return cls(**kwargs)


class _CaseRows:
    """Row number by case name, for the packed views."""

    cases: list[str]

    @cached_property
    def _row_of(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.cases)}

    def index(self, case: str) -> int:
        try:
            return self._row_of[case]
        except KeyError:
            raise StoreError(f"case {case!r} is not in this packed view") from None


@dataclass
class PackedLP(_CaseRows):
    """All ok cases of an lp view as one memory-mapped ``[N, D]`` array (rows in ``cases`` order)."""

    cases: list[str]
    X: np.ndarray
    dtype: str = "float32"
    checksum: str = ""

    def as_float32(self) -> np.ndarray:
        return to_float32(self.X, self.dtype)


@dataclass
class PackedEAO(_CaseRows):
    """All ok cases of an eao view: tokens ``[sum n_i, D]``, ``offsets[N+1]``, ``grids[N, 3]`` (h, w, l).

    Case ``i``'s tokens are rows ``offsets[i]:offsets[i+1]``, in C order of its ``[h, w, l]`` grid.
    """

    cases: list[str]
    tokens: np.ndarray
    offsets: np.ndarray
    grids: np.ndarray
    dtype: str = "float32"
    checksum: str = ""

    def case_tokens(self, i: int) -> np.ndarray:
        """Tokens ``[n_i, D]`` of case number ``i`` as float32."""
        return to_float32(self.tokens[self.offsets[i] : self.offsets[i + 1]], self.dtype)


def to_bfloat16_bits(arr: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 stored as uint16 (round to nearest even), for compact packed arrays."""
    bits = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def to_float32(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Packed array of ``dtype`` (float32, float16, or bfloat16 stored as uint16) -> float32."""
    if dtype == "bfloat16":
        return (np.asarray(arr, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(arr, dtype=np.float32)


def _encode(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return to_bfloat16_bits(arr)
    return np.asarray(arr, dtype=dtype)


def _storage_dtype(dtype: str) -> np.dtype:
    return np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(dtype)


@contextlib.contextmanager
def _locked(fh: Any) -> Iterator[None]:
    """Exclusive advisory lock where the platform has one (several runners may append to one view)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


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
        self._records: dict[str, CaseRecord] = {}
        self._offset = 0
        self._identity: tuple[int, int] | None = None
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
    def _refresh(self) -> None:
        """Read lines appended since the last read; start over if the file was replaced or shrank."""
        try:
            st = self.manifest_path.stat()
        except FileNotFoundError:
            self._records, self._offset, self._identity = {}, 0, None
            return
        identity = (st.st_dev, st.st_ino)
        if identity != self._identity or st.st_size < self._offset:
            self._records, self._offset = {}, 0
            self._identity = identity
        if st.st_size == self._offset:
            return
        with self.manifest_path.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1  # a torn last line (no newline yet) stays unread
        for line in chunk[:end].splitlines():
            if not line.strip():
                continue
            try:
                rec = CaseRecord.from_dict(json.loads(line))
            except (ValueError, TypeError, AttributeError):
                continue  # a line torn by a kill, later fenced off by a newline
            self._records[rec.case] = rec
        self._offset += end

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
        line = record.to_json().encode() + b"\n"
        with self.manifest_path.open("a+b") as fh, _locked(fh):
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = b"\n" + line  # fence off a torn line left by a killed writer
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self._refresh()

    def records(self) -> dict[str, CaseRecord]:
        """Latest record of every case in the manifest."""
        self._refresh()
        return dict(self._records)

    def record(self, case: str) -> CaseRecord | None:
        self._refresh()
        return self._records.get(case)

    def cases(self, status: str | None = "ok") -> list[str]:
        """Sorted case names with this status (``None``: all). ok cases must also have their file."""
        self._refresh()
        out = []
        for case, rec in self._records.items():
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
        self._refresh()
        counts = dict.fromkeys(STATUSES, 0)
        for rec in self._records.values():
            counts[rec.status] = counts.get(rec.status, 0) + 1
        return counts

    def manifest_checksum(self, cases: Iterable[str] | None = None) -> str:
        """sha256 over the latest records, sorted by case: changes whenever one of those records changes
        (but not with the time a run took, when it wrote or the input files' stamps: an identical
        re-extraction, or the same inputs copied elsewhere, keep it).

        ``cases`` restricts it to some cases (a case without a record counts as absent), so a head trained on
        the train/val cases stays valid when test cases are extracted later.
        """
        self._refresh()
        digest = hashlib.sha256()
        for case in sorted(self._records if cases is None else set(cases)):
            record = self._records.get(case)
            text = record.to_json(exclude=_NOT_CONTENT) if record else f"{case}: absent"
            digest.update(text.encode() + b"\n")
        return digest.hexdigest()

    def compact(self) -> None:
        """Rewrite the manifest atomically with only the latest record per case.

        Housekeeping for a view no runner is writing to (an append racing the rewrite could be lost).
        """
        records = self.records()
        text = "".join(records[c].to_json() + "\n" for c in sorted(records))
        write_text_atomic(self.manifest_path, text)
        self._identity = None
        self._refresh()

    # -- cases ----------------------------------------------------------------------------------------
    def feature_dim(self, exclude: str | None = None) -> int | None:
        """D of the view's ok cases (first dimension of y_hat), or None while it has none."""
        self._refresh()
        for case, rec in self._records.items():
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

        The cache records the manifest checksum and is rebuilt only when it differs. Files are named after
        the checksum and written atomically; the metadata JSON is written last, so a killed build is redone.
        """
        if dtype not in PACK_DTYPES:
            raise StoreError(f"unknown packed dtype {dtype!r}; use one of {', '.join(PACK_DTYPES)}")
        checksum = self.manifest_checksum()
        meta_path = self.packed_dir / f"{self.task}-{dtype}.json"
        meta = self._read_meta(meta_path)
        if meta is None or meta.get("checksum") != checksum:
            meta = self._build_packed(dtype, checksum, meta_path)
        return self._load_packed(meta)

    def _read_meta(self, path: Path) -> dict[str, Any] | None:
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        files = meta.get("files", {}).values()
        return meta if all((self.packed_dir / f).is_file() for f in files) else None

    def _build_packed(self, dtype: str, checksum: str, meta_path: Path) -> dict[str, Any]:
        cases = self.cases("ok")
        if not cases:
            raise StoreError(f"{self}: no ok cases to pack (run `ctfm extract` or `ctfm store import`)")
        damaged: list[str] = []
        while True:  # a file damaged after it was stored: that case is left out and says why, the rest packs
            try:
                files, extra = self._write_packed(cases, f"{self.task}-{dtype}-{checksum[:16]}", dtype)
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
        write_text_atomic(meta_path, json.dumps(meta))
        self._drop_stale(set(files.values()), meta_path.stem)
        return meta

    def _write_packed(self, cases: list[str], stem: str, dtype: str) -> tuple[dict[str, str], dict[str, Any]]:
        """Pack ``cases`` into ``packed/<stem>.*.npy``: one ``[N, D]`` array (lp) or the token rows with
        their offsets (eao), read and written one case at a time (the records give every shape up front)."""
        shapes = [tuple(self.record(c).shape) for c in cases]  # type: ignore[union-attr]
        dims = {s[0] for s in shapes}
        if len(dims) != 1:
            raise StoreError(f"{self}: cases disagree on feature dimension D ({sorted(dims)})")
        arrays = (self._read_packable(c, shape) for c, shape in zip(cases, shapes, strict=True))
        if self.task == "lp":
            files = {"X": f"{stem}.X.npy"}
            self._save_npy(files["X"], np.stack([_encode(a, dtype) for a in arrays]))
            return files, {}
        grids = np.array([s[1:] for s in shapes], dtype=np.int64).reshape(len(shapes), 3)
        offsets = np.zeros(len(shapes) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(grids.prod(axis=1))
        files = {"tokens": f"{stem}.tokens.npy", "offsets": f"{stem}.offsets.npy"}
        self._save_tokens(files["tokens"], arrays, dtype, (int(offsets[-1]), dims.pop()))
        self._save_npy(files["offsets"], offsets)
        return files, {"grids": grids.tolist()}

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

    def _save_npy(self, name: str, arr: np.ndarray) -> None:
        self.packed_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.packed_dir / name) as tmp, tmp.open("wb") as fh:
            np.save(fh, arr)

    def _save_tokens(
        self, name: str, arrays: Iterable[np.ndarray], dtype: str, shape: tuple[int, int]
    ) -> None:
        """Write token rows ``[total, D]`` as an .npy file one case at a time: memory holds one case, never
        the whole cache (real token maps reach tens of GB)."""
        self.packed_dir.mkdir(parents=True, exist_ok=True)
        header = {"descr": np.lib.format.dtype_to_descr(_storage_dtype(dtype)), "fortran_order": False}
        rows = 0
        with atomic_path(self.packed_dir / name) as tmp, tmp.open("wb") as fh:
            np.lib.format.write_array_header_2_0(fh, {**header, "shape": shape})
            for a in arrays:
                tok = np.ascontiguousarray(_encode(a.reshape(shape[1], -1).T, dtype))
                fh.write(tok.data)
                rows += tok.shape[0]
            if rows != shape[0]:  # inside the atomic write: a short file is never published
                raise StoreError(f"{self}: packed {rows} token rows, the records announce {shape[0]}")

    def _drop_stale(self, keep: set[str], prefix: str) -> None:
        for path in self.packed_dir.glob(f"{prefix}-*.npy"):
            if path.name not in keep:
                with contextlib.suppress(OSError):
                    path.unlink()

    def _load_packed(self, meta: dict[str, Any]) -> PackedLP | PackedEAO:
        def load(name: str) -> np.ndarray:
            return np.load(self.packed_dir / meta["files"][name], mmap_mode="r")

        if meta["task"] == "lp":
            return PackedLP(cases=meta["cases"], X=load("X"), dtype=meta["dtype"], checksum=meta["checksum"])
        return PackedEAO(
            cases=meta["cases"],
            tokens=load("tokens"),
            offsets=np.asarray(load("offsets")),
            grids=np.asarray(meta["grids"], dtype=np.int64).reshape(-1, 3),
            dtype=meta["dtype"],
            checksum=meta["checksum"],
        )

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
        import pandas as pd

        path = Path(out_dir or self.dir) / timing_csv_name(image or self.image_name)
        suffix = _image_suffix()
        recs = self.records()
        rows = [{"CaseName": f"{c}{suffix}", "RunningTime": round(recs[c].seconds, 4)} for c in sorted(recs)]
        with atomic_path(path) as tmp:
            pd.DataFrame(rows, columns=list(TIMING_COLUMNS)).to_csv(tmp, index=False)
        return path


TIMING_COLUMNS = ("CaseName", "RunningTime")


def _image_suffix() -> str:
    from ctfm.benchmark import load_benchmark

    return str(load_benchmark().raw.get("image_suffix", ".nii.gz"))


def _timing_template() -> str:
    from ctfm.benchmark import load_benchmark

    return str(load_benchmark().section("container")["timing_csv"])


def timing_csv_name(image: str) -> str:
    """``acme_lp`` -> ``acme_lp_feature_extraction_time.csv``, the reference runner's timing file name."""
    return _timing_template().format(image=sanitize_name(image))


def read_timing_csv(path: Path) -> dict[str, float]:
    """Seconds per case of a reference timing CSV (columns ``CaseName`` = ``<case>.nii.gz``, ``RunningTime``).

    A malformed file raises :class:`StoreError` naming it and the row, before anything is imported.
    """
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)  # the text as written, for messages
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise StoreError(f"{path}: not a readable timing CSV ({type(exc).__name__}: {exc})") from None
    missing = [c for c in TIMING_COLUMNS if c not in table.columns]
    if missing:
        raise StoreError(
            f"{path}: no column {', '.join(missing)} (a reference timing CSV has CaseName, RunningTime)"
        )
    suffix = _image_suffix()
    seconds: dict[str, float] = {}
    for line, (name, value) in enumerate(zip(table["CaseName"], table["RunningTime"], strict=True), start=2):
        secs = pd.to_numeric(value, errors="coerce")
        if not isinstance(name, str) or not name.strip() or not np.isfinite(secs) or secs < 0:
            raise StoreError(f"{path}, line {line}: {name!r}, {value!r} is not a case name and seconds >= 0")
        name = name.strip()
        seconds[name.removesuffix(suffix).removesuffix(".nii")] = float(secs)  # a rerun's later row wins
    return seconds


def find_timing_csv(h5_dir: Path, view: View) -> Path | None:
    """The reference timing CSV beside imported ``.h5`` files: the only one there, or the one named after the
    view's image (``<model>_<task>``) when there are several."""
    found = sorted(p for p in Path(h5_dir).glob(_timing_template().format(image="*")) if p.is_file())
    if len(found) <= 1:
        return found[0] if found else None
    named = Path(h5_dir) / timing_csv_name(view.image_name)
    if named in found:
        return named
    raise StoreError(
        f"{h5_dir}: {len(found)} timing CSVs ({', '.join(p.name for p in found)}); pick one with --timing"
    )


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


@dataclass
class ImportReport:
    """What ``import_folder`` did: number of ok cases, (case, reason) of every rejected file, and the timing
    CSV read (if any) with the imported cases it has no row for."""

    ok: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    timing: Path | None = None
    untimed: list[str] = field(default_factory=list)


def import_folder(view: View, h5_dir: Path, timing: Path | None = None) -> ImportReport:
    """Import every ``<case>.h5`` in ``h5_dir`` into ``view``; bad files are recorded failed, not fatal
    (a case already stored keeps its embedding).

    Each case's seconds come from the reference timing CSV ``timing``, or the one beside the files
    (:func:`find_timing_csv`). For lp the first good file fixes D (or the view's existing D); files of another
    D are rejected.
    """
    h5_dir = Path(h5_dir)
    if not h5_dir.is_dir():
        raise StoreError(f"{h5_dir}: not a folder of <case>.h5 files")
    files = sorted(p for p in h5_dir.glob("*.h5") if not p.name.startswith("."))  # links and folders too
    if not files:
        raise StoreError(f"{h5_dir}: no <case>.h5 files found")
    report = ImportReport(timing=Path(timing) if timing is not None else find_timing_csv(h5_dir, view))
    seconds = read_timing_csv(report.timing) if report.timing is not None else {}
    with H5Reader() as reader:
        for path in files:
            _import_one(view, path, seconds, report, reader)
    return report


def _import_one(
    view: View, path: Path, seconds: dict[str, float], report: ImportReport, reader: H5Reader
) -> None:
    """One file of :func:`import_folder`: stored, or recorded failed with one line."""
    case = path.stem
    try:
        check_case(case)
    except StoreError as exc:
        report.failed.append((case, str(exc)))
        return
    if report.timing is not None and case not in seconds:
        report.untimed.append(case)
    record = CaseRecord(case=case, status="ok", extractor="import", seconds=seconds.get(case, 0.0))
    try:
        view.import_file(case, path, record, reader)
        report.ok += 1
    except StoreError as exc:
        if view.is_done(case):  # a bad new file never costs the embedding already stored
            report.failed.append((case, f"{exc} (kept the embedding already stored)"))
            return
        view.record_failure(case, "failed", str(exc), extractor="import", seconds=record.seconds)
        report.failed.append((case, str(exc)))


# -- the reference layout ------------------------------------------------------------------------------------
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
    from ctfm.benchmark import load_benchmark

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
