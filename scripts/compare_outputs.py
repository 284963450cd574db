"""Compare two ``ctfm run`` / ``ctfm demo`` output folders and print what differs (exit 1 when anything does).

Usage: python scripts/compare_outputs.py A B [--tol 1e-9] [--most 40]

Used to check that a change of code leaves behaviour unchanged: the same store (manifests, embeddings, packed
caches), probes (summaries, reports, histories, checkpoints), eval results and leaderboards. Numbers count as
equal within ``--tol`` (absolute or relative). What legitimately differs between two runs is left out:
timings and timestamps (keys and columns such as ``seconds``, ``written_at``, ``finished``, ``RunningTime``),
input file stamps (``inputs``: mtimes), absolute paths (each root is replaced by ``<root>``), checksums over
files holding those (``manifest_checksum`` and the packed caches named by it, a manifest row's ``checksum`` of
its own h5 file), lock files, logs, stage stamps and figures (their presence is compared, not their pixels).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# Keys (JSON, CSV columns, h5 / checkpoint metadata) whose values are timings, timestamps or hashes of them.
VOLATILE = re.compile(
    r"(^|_)(seconds|elapsed|duration|started|finished|written_at|timestamp|created|mtime|manifest_checksum)$"
    r"|^(RunningTime|inputs)$"  # the reference's per-case timing column; a case's input file stamps (mtimes)
)
PACK_KEY = re.compile(r"-[0-9a-f]{16}(?=\.)")  # packed caches are named by their manifest's checksum
SKIP_NAMES = {".ctfm.lock", "DONE"}  # locks; DONE holds only its finish time
SKIP_PARTS = {".ctfm", "jobs"}  # stage stamps, cluster job folders
SKIP_SUFFIXES = {".log", ".lock"}
PRESENCE_ONLY = {".png", ".html"}  # figures and pages: rendered, compared by presence


class Differences(list):
    def add(self, where: str, what: str) -> None:
        self.append(f"{where}: {what}")


def _files(root: Path) -> dict[str, Path]:
    return {
        PACK_KEY.sub("-<key>", p.relative_to(root).as_posix()): p
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and p.name not in SKIP_NAMES
        and p.suffix not in SKIP_SUFFIXES
        and not SKIP_PARTS & set(p.relative_to(root).parts)
    }


def _normal(value: Any, roots: tuple[str, str]) -> Any:
    """``value`` with each output root written ``<root>`` and volatile keys dropped."""
    if isinstance(value, dict):
        return {k: _normal(v, roots) for k, v in value.items() if not VOLATILE.search(str(k))}
    if isinstance(value, list | tuple):
        return [_normal(v, roots) for v in value]
    if isinstance(value, str):
        for root in roots:
            value = value.replace(root, "<root>")
        return PACK_KEY.sub("-<key>", value)
    return value


def _same(a: Any, b: Any, tol: float, where: str, out: Differences) -> None:
    """Structural comparison; numbers within ``tol``, NaN equal to NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                out.add(f"{where}.{key}", f"only in {'A' if key in a else 'B'}")
            else:
                _same(a[key], b[key], tol, f"{where}.{key}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.add(where, f"{len(a)} items vs {len(b)}")
        else:
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                _same(x, y, tol, f"{where}[{i}]", out)
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        _same_array(np.asarray(a), np.asarray(b), tol, where, out)
    elif _number(a) and _number(b):
        if not _close(float(a), float(b), tol):
            out.add(where, f"{a!r} vs {b!r}")
    elif a != b:
        out.add(where, f"{_short(a)} vs {_short(b)}")


def _number(x: Any) -> bool:
    return isinstance(x, int | float | np.number) and not isinstance(x, bool)


def _close(a: float, b: float, tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) < 80 else text[:77] + "..."


def _same_array(a: np.ndarray, b: np.ndarray, tol: float, where: str, out: Differences) -> None:
    if a.shape != b.shape or a.dtype.kind != b.dtype.kind:
        out.add(where, f"array {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
    elif a.dtype.kind in "fc":
        bad = ~np.isclose(a, b, rtol=tol, atol=tol, equal_nan=True)
        if bad.any():
            out.add(
                where,
                f"{int(bad.sum())} of {a.size} values differ (max |a-b| {np.nanmax(np.abs(a - b)):.3g})",
            )
    elif not np.array_equal(a, b):
        out.add(where, "arrays differ")


def _load(path: Path, roots: tuple[str, str]) -> Any:
    """A file as comparable data (volatile parts dropped), or None for a byte comparison."""
    name = path.name
    if name.endswith(".json"):
        data = json.loads(path.read_text())
        if path.parent.name == "packed":  # the manifest checksum the cache was packed from
            data.pop("checksum", None)
        return _normal(data, roots)
    if name.endswith(".jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if name == "manifest.jsonl":  # append-only: a case's last row is its state; its checksum hashes its
            # h5 file, whose attributes hold timings
            last = {r.get("case"): {k: v for k, v in r.items() if k != "checksum"} for r in rows}
            return _normal(last, roots)
        return _normal(rows, roots)
    if name.endswith((".yaml", ".yml")):
        import yaml

        return _normal(yaml.safe_load(path.read_text()), roots)
    if name.endswith(".csv"):
        import pandas as pd

        frame = pd.read_csv(path, keep_default_na=False)
        frame = frame[[c for c in frame.columns if not VOLATILE.search(str(c))]]
        return _normal({"columns": list(frame.columns), "rows": frame.to_dict("records")}, roots)
    if name.endswith(".npy"):
        return np.load(path, mmap_mode="r")
    if name.endswith((".h5", ".hdf5")):
        return _h5(path, roots)
    if name.endswith((".pt", ".pth")):
        import torch

        return _normal(_plain(torch.load(path, map_location="cpu", weights_only=False)), roots)
    if name.endswith(".nii.gz"):
        import nibabel as nib

        img = nib.load(path)
        return {"affine": np.asarray(img.affine), "data": np.asarray(img.dataobj)}
    if name.endswith(".gz"):
        return gzip.decompress(path.read_bytes())  # the gzip header holds a time stamp
    if name.endswith((".md", ".txt")):
        return _normal(path.read_text().splitlines(), roots)
    return None


def _h5(path: Path, roots: tuple[str, str]) -> dict[str, Any]:
    import h5py

    out: dict[str, Any] = {}
    with h5py.File(path, "r") as fh:

        def visit(name: str, obj: Any) -> None:
            attrs = {k: _plain(v) for k, v in obj.attrs.items()}
            out[name + "@attrs"] = _normal(attrs, roots)
            if isinstance(obj, h5py.Dataset):
                out[name] = np.asarray(obj[()])

        visit("/", fh)
        fh.visititems(visit)
    return out


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars as numpy / Python values, containers recursively."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def compare(a: Path, b: Path, tol: float = 1e-9) -> Iterator[str]:
    """Every difference between output folders ``a`` and ``b``, one line each."""
    fa, fb = _files(a), _files(b)
    roots = (str(a.resolve()), str(b.resolve()))
    for rel in sorted(set(fa) ^ set(fb)):
        yield f"{rel}: only in {'A' if rel in fa else 'B'}"
    for rel in sorted(set(fa) & set(fb)):
        pa, pb = fa[rel], fb[rel]
        if pa.suffix in PRESENCE_ONLY:
            continue
        out = Differences()
        try:
            da, db = _load(pa, roots), _load(pb, roots)
        except Exception as exc:  # a file that cannot be read is itself a difference worth seeing
            yield f"{rel}: cannot be read ({type(exc).__name__}: {exc})"
            continue
        if da is None:
            if pa.read_bytes() != pb.read_bytes():
                yield f"{rel}: bytes differ"
            continue
        _same(da, db, tol, rel, out)
        yield from out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--tol", type=float, default=1e-9, help="absolute / relative tolerance for numbers")
    parser.add_argument("--most", type=int, default=40, help="print at most this many differences")
    args = parser.parse_args(argv)
    for folder in (args.a, args.b):
        if not folder.is_dir():
            parser.error(f"{folder}: not a folder")
    count = 0
    for line in compare(args.a, args.b, args.tol):
        count += 1
        if count <= args.most:
            print(line)
    files = len(_files(args.a))
    if count > args.most:
        print(f"(+{count - args.most} more differences)")
    print(f"{count} difference(s) over {files} file(s) of A" if count else f"same: {files} file(s) compared")
    return int(bool(count))


if __name__ == "__main__":
    sys.exit(main())
