"""Checks on what an untrusted container wrote, before anything of it enters the embedding store.

A team container writes ``<case>.h5`` files into an output folder the runner gave it. Nothing there is
trusted: a file may be a symlink planted to make the runner read a host file, huge, not HDF5, hold NaN, have
the wrong rank, or be for a case the container was never given. Each problem fails that one case with a
reason; files that are not expected outputs are reported and never copied.

Example:
    >>> import numpy as np, h5py, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with h5py.File(d / "c1.h5", "w") as f:
    ...     _ = f.create_dataset("y_hat", data=np.ones(4, np.float32))
    >>> scan = scan_outputs(d, ["c1", "c2"], task="lp", staging=d / "staged")
    >>> sorted(scan.valid), scan.missing
    (['c1'], ['c2'])
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctfm.errors import StoreError

OUTPUT_SUFFIX = ".h5"
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB per case file


class OutputInvalid(Exception):
    """One output file broke the contract; the message is the reason recorded for that case."""


@dataclass
class ValidOutput:
    """A validated case output: the array as read and the file it came from."""

    case: str
    path: Path
    y_hat: np.ndarray
    size: int
    mtime_ns: int


@dataclass
class OutputScan:
    """Result of checking an output folder against the cases a container was given."""

    valid: dict[str, ValidOutput] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def stage_output(path: Path, staging: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """Copy one container output into a runner-private folder, refusing links, special files and huge files.

    The container may still be running: it could swap a checked file for a symlink to a host file. Copying
    through an ``O_NOFOLLOW`` descriptor first, then checking and ingesting only the private copy, closes that.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise OutputInvalid("output file missing") from None
    except OSError as exc:  # ELOOP: a symlink
        raise OutputInvalid(f"output is not a regular file ({exc.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OutputInvalid("output is not a regular file (a folder or special file)")
    staging.mkdir(parents=True, exist_ok=True)
    dest = staging / Path(path).name
    with os.fdopen(fd, "rb") as src:
        if st.st_size > max_bytes:
            raise OutputInvalid(f"output is {st.st_size} bytes, over the limit of {max_bytes}")
        with dest.open("wb") as out:
            copied = 0
            while block := src.read(1 << 20):
                copied += len(block)
                if copied > max_bytes:
                    raise OutputInvalid(f"output grew over the limit of {max_bytes} bytes")
                out.write(block)
    return dest


def read_y_hat(path: Path, task: str, dim: int | None = None) -> np.ndarray:
    """Read and check a (staged) ``<case>.h5``; raise :class:`OutputInvalid` naming the problem.

    ``dim`` is the feature size D already seen for this team (lp vectors, eao maps' first axis): a case with
    another D fails, because probes need one D per team.
    """
    from ctfm.store import read_y_hat as read_stored
    from ctfm.store import validate_y_hat

    try:
        arr = read_stored(path)
        validate_y_hat(arr, task)
    except StoreError as exc:  # the table already names the case: drop the staging path
        raise OutputInvalid(str(exc).removeprefix(f"{path}: ")) from None
    if dim is not None and arr.shape[0] != dim:
        raise OutputInvalid(f"feature size {arr.shape[0]} differs from {dim} of this team's other cases")
    return arr


def check_output(
    path: Path, staging: Path, task: str, max_bytes: int = DEFAULT_MAX_BYTES, dim: int | None = None
) -> ValidOutput:
    """Stage and check one output; the returned ``path`` is the private copy to ingest."""
    staged = stage_output(path, staging, max_bytes)
    try:
        arr = read_y_hat(staged, task, dim)
    except OutputInvalid:
        staged.unlink(missing_ok=True)
        raise
    st = staged.stat()
    return ValidOutput(Path(path).name[: -len(OUTPUT_SUFFIX)], staged, arr, st.st_size, st.st_mtime_ns)


def scan_outputs(
    out_dir: Path,
    cases: Iterable[str],
    task: str,
    staging: Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
    dim: int | None = None,
    skip: Iterable[str] = (),
) -> OutputScan:
    """Check every expected ``<case>.h5`` in ``out_dir``; list what is missing and what should not be there.

    Valid outputs are staged into ``staging``. Cases in ``skip`` (already ingested) are neither re-read nor
    reported missing.
    """
    expected = list(cases)
    wanted = {f"{c}{OUTPUT_SUFFIX}": c for c in expected}
    done = set(skip)
    scan = OutputScan()
    present: set[str] = set()
    for entry in sorted(os.listdir(out_dir)):
        if entry in wanted:
            present.add(wanted[entry])
        else:
            scan.unexpected.append(entry)
    for case in expected:
        if case in done:
            continue
        if case not in present:
            scan.missing.append(case)
            continue
        try:
            out = check_output(Path(out_dir) / f"{case}{OUTPUT_SUFFIX}", staging, task, max_bytes, dim)
        except OutputInvalid as exc:
            scan.invalid[case] = str(exc)
            continue
        scan.valid[case] = out
        if dim is None:
            dim = feature_dim(out.y_hat)
    return scan


def feature_dim(arr: np.ndarray) -> int:
    """D of an lp vector ``[D]`` or an eao map ``[D, h, w, l]``."""
    return int(arr.shape[0])


def embedding_problems(arrays: dict[str, np.ndarray]) -> list[str]:
    """Signs of a broken extractor: constant embeddings, or all cases giving the same embedding."""
    problems = []
    constant = [c for c, a in arrays.items() if a.size and np.ptp(a.astype(np.float64)) == 0]
    if constant:
        problems.append(f"constant embedding (all values equal) for {', '.join(sorted(constant))}")
    items = [a for _, a in sorted(arrays.items())]
    if len(items) >= 2 and all(a.shape == items[0].shape and np.array_equal(a, items[0]) for a in items[1:]):
        problems.append(f"collapsed: all {len(items)} cases have the identical embedding")
    return problems
