"""Packed views: every ok case of a view in one contiguous memory-mapped array under ``packed/``.

Files are named after the manifest checksum they were built from and written atomically; the metadata JSON
is written last, so a killed build is redone and a reader never sees half a cache.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ctfm.core.errors import StoreError
from ctfm.core.fsutil import atomic_path, write_text_atomic

PACK_DTYPES = ("float32", "float16", "bfloat16")


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


def read_meta(packed_dir: Path, meta_path: Path) -> dict[str, Any] | None:
    """A packed cache's metadata, or None when it is unreadable or one of its files is gone."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    files = meta.get("files", {}).values()
    return meta if all((packed_dir / f).is_file() for f in files) else None


def write_meta(meta_path: Path, meta: dict[str, Any]) -> None:
    """Publish a cache (its arrays are written first), then drop the older caches of the same name."""
    write_text_atomic(meta_path, json.dumps(meta))
    keep = set(meta["files"].values())
    for path in meta_path.parent.glob(f"{meta_path.stem}-*.npy"):
        if path.name not in keep:
            with contextlib.suppress(OSError):
                path.unlink()


def write_packed(
    packed_dir: Path,
    stem: str,
    task: str,
    dtype: str,
    arrays: Iterable[np.ndarray],
    shapes: list[tuple[int, ...]],
    owner: str,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Pack the cases' ``arrays`` into ``<packed_dir>/<stem>.*.npy``: one ``[N, D]`` array (lp) or the token
    rows with their offsets (eao), read and written one case at a time (``shapes`` gives every shape up
    front). ``owner`` names the view in messages. Returns (file by role, extra metadata)."""
    dims = {s[0] for s in shapes}
    if len(dims) != 1:
        raise StoreError(f"{owner}: cases disagree on feature dimension D ({sorted(dims)})")
    packed_dir.mkdir(parents=True, exist_ok=True)
    if task == "lp":
        files = {"X": f"{stem}.X.npy"}
        _save_npy(packed_dir / files["X"], np.stack([_encode(a, dtype) for a in arrays]))
        return files, {}
    grids = np.array([s[1:] for s in shapes], dtype=np.int64).reshape(len(shapes), 3)
    offsets = np.zeros(len(shapes) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(grids.prod(axis=1))
    files = {"tokens": f"{stem}.tokens.npy", "offsets": f"{stem}.offsets.npy"}
    _save_tokens(packed_dir / files["tokens"], arrays, dtype, (int(offsets[-1]), dims.pop()), owner)
    _save_npy(packed_dir / files["offsets"], offsets)
    return files, {"grids": grids.tolist()}


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.save(fh, arr)


def _save_tokens(
    path: Path, arrays: Iterable[np.ndarray], dtype: str, shape: tuple[int, int], owner: str
) -> None:
    """Write token rows ``[total, D]`` as an .npy file one case at a time: memory holds one case, never
    the whole cache (real token maps reach tens of GB)."""
    header = {"descr": np.lib.format.dtype_to_descr(_storage_dtype(dtype)), "fortran_order": False}
    rows = 0
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.lib.format.write_array_header_2_0(fh, {**header, "shape": shape})
        for a in arrays:
            tok = np.ascontiguousarray(_encode(a.reshape(shape[1], -1).T, dtype))
            fh.write(tok.data)
            rows += tok.shape[0]
        if rows != shape[0]:  # inside the atomic write: a short file is never published
            raise StoreError(f"{owner}: packed {rows} token rows, the records announce {shape[0]}")


def load_packed(packed_dir: Path, meta: dict[str, Any]) -> PackedLP | PackedEAO:
    """Memory-map a cache described by ``meta``."""

    def load(name: str) -> np.ndarray:
        return np.load(packed_dir / meta["files"][name], mmap_mode="r")

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
