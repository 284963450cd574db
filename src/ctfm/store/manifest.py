"""A view's ``manifest.jsonl``: one JSON :class:`CaseRecord` per line, appended, never rewritten.

A process killed mid-write leaves at most a torn last line, which is ignored (and fenced off by a newline
before the next append); the last line of a case wins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class Manifest:
    """The records of one manifest file, read lazily and incrementally (only lines appended since)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records: dict[str, CaseRecord] = {}
        self._offset = 0
        self._identity: tuple[int, int] | None = None

    def latest(self) -> Mapping[str, CaseRecord]:
        """The latest record of every case (read-only; valid until the next append)."""
        self._refresh()
        return self._records

    def _refresh(self) -> None:
        """Read lines appended since the last read; start over if the file was replaced or shrank."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._records, self._offset, self._identity = {}, 0, None
            return
        identity = (st.st_dev, st.st_ino)
        if identity != self._identity or st.st_size < self._offset:
            self._records, self._offset = {}, 0
            self._identity = identity
        if st.st_size == self._offset:
            return
        with self.path.open("rb") as fh:
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

    def append(self, record: CaseRecord) -> None:
        """Append one line, locked and synced; a torn line a killed writer left is fenced off first."""
        line = record.to_json().encode() + b"\n"
        with self.path.open("a+b") as fh, _locked(fh):
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = b"\n" + line  # fence off a torn line left by a killed writer
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self._refresh()

    def checksum(self, cases: Iterable[str] | None = None) -> str:
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
