"""What a team container wrote, checked before anything of it enters the store: bounded in time and work.

Nothing in a container's output folder is trusted. A ``<case>.h5`` may be a symlink planted to make the runner
read a host file, a FIFO, a folder, huge, not HDF5, a corrupted HDF5 file that makes the library raise any
exception or crash, or a tiny file declaring millions of one-value chunks that takes minutes to read. So:

- the folder is never walked: expected files are looked up by name and the rest is listed one level deep, up
  to a limit, only to be reported;
- a file is copied into a private staging folder through an ``O_NOFOLLOW`` descriptor, up to a size limit;
- the private copy is read in a separate process (:class:`OutputReader`) under an address-space limit and a
  deadline, after its layout is inspected (no links, no virtual or external storage, a float array of the
  task's rank and a bounded size, a bounded number of chunks); a hang, crash or exception of the HDF5 library
  there is that case's failure, with the reason;
- only the array comes back: the store writes its own file from it, never the team's layout.

Example:
    >>> import numpy as np, h5py, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with h5py.File(d / "c1.h5", "w") as f:
    ...     _ = f.create_dataset("y_hat", data=np.ones(4, np.float32))
    >>> with OutputReader(timeout_s=60) as reader:  # doctest: +SKIP
    ...     check_output(d / "c1.h5", d / "staged", "lp", reader).shape
    (4,)
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import stat
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

OUTPUT_SUFFIX = ".h5"
DATASET = "y_hat"
MAX_Y_HAT_BYTES = 1 << 30  # one case's array in memory
FREE_CHUNKS = 1024  # any chunking up to this many chunks
MIN_CHUNK_BYTES = 4096  # beyond it, chunks must average at least this size
READER_HEADROOM = 4 << 30  # the reader's address space beyond its start-up size
LIST_LIMIT = 1000  # entries of an output folder listed for the report


class OutputInvalid(Exception):
    """One output broke the contract; the message is the reason recorded for that case."""


def present_outputs(out_dir: Path, cases: list[str]) -> dict[str, tuple[int, int]]:
    """``case -> (size, mtime_ns)`` of each ``<case>.h5`` entry, looked up by name (any file type)."""
    present = {}
    for case in cases:
        with contextlib.suppress(OSError):
            st = os.lstat(Path(out_dir) / f"{case}{OUTPUT_SUFFIX}")
            present[case] = (st.st_size, st.st_mtime_ns)
    return present


def stray_entries(out_dir: Path, cases: list[str], limit: int = LIST_LIMIT) -> list[str]:
    """Names of the other entries of an output folder, one level deep, at most ``limit`` of them (then a
    last ``(and more)``): listed for the report, never read."""
    wanted = {f"{c}{OUTPUT_SUFFIX}" for c in cases}
    stray: list[str] = []
    with contextlib.suppress(OSError), os.scandir(out_dir) as entries:
        for entry in entries:
            if entry.name in wanted:
                continue
            if len(stray) == limit:
                return [*sorted(stray), "(and more)"]
            stray.append(printable(entry.name))
    return sorted(stray)


def printable(name: str) -> str:
    """A file name a container chose, safe to print on one line."""
    return name if name.isprintable() else ascii(name)


def stage_output(path: Path, staging: Path, max_bytes: int) -> Path:
    """Copy one output into a runner-private folder, refusing links, special files and huge files.

    The container may still be running: it could swap a checked file for a symlink to a host file. Copying
    through an ``O_NOFOLLOW`` descriptor first, then checking and reading only the private copy, closes that.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise OutputInvalid("output file missing") from None
    except OSError as exc:  # ELOOP: a symlink; ENXIO: a socket
        raise OutputInvalid(f"output is not a regular file ({exc.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OutputInvalid("output is not a regular file (a folder or special file)")
    with os.fdopen(fd, "rb") as src:
        if st.st_size > max_bytes:
            raise OutputInvalid(f"output is {st.st_size} bytes, over the limit of {max_bytes}")
        staging.mkdir(parents=True, exist_ok=True)
        dest = staging / Path(path).name
        with dest.open("wb") as out:  # the runner's own disk: its errors are the runner's, raised as such
            copied = 0
            while block := _read_block(src):
                copied += len(block)
                if copied > max_bytes:
                    raise OutputInvalid(f"output grew over the limit of {max_bytes} bytes")
                out.write(block)
    return dest


def _read_block(src: Any) -> bytes:
    try:
        return src.read(1 << 20)
    except OSError as exc:
        raise OutputInvalid(f"output could not be read ({exc.strerror})") from None


def check_output(path: Path, staging: Path, task: str, reader: OutputReader, max_bytes: int) -> np.ndarray:
    """Stage one output and read its ``y_hat`` through ``reader``; the staged copy is removed."""
    staged = stage_output(path, staging, max_bytes)
    try:
        return reader.read(staged, task)
    finally:
        staged.unlink(missing_ok=True)


class OutputReader:
    """Reads staged HDF5 files in a child process with a deadline per file; a file that hangs or crashes
    the reader fails alone, and the next read starts a fresh reader. Safe to share between threads."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> OutputReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, path: Path, task: str) -> np.ndarray:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            try:
                self._conn.send((str(path), task))
                if not self._conn.poll(self.timeout_s):
                    self._stop()
                    raise OutputInvalid(f"reading it took over {self.timeout_s:g} s; reader stopped")
                status, payload = self._conn.recv()
            except (EOFError, OSError):
                code = self._stop()
                raise OutputInvalid(f"reading it crashed the HDF5 reader (exit code {code})") from None
        if status != "ok":
            raise OutputInvalid(payload)
        return payload

    def _start(self) -> None:
        """A fresh interpreter (never a fork of a process that runs threads), talking over a socket pair."""
        self._stop()
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        with ours, theirs:
            code = f"import sys; from {__name__} import serve_fd; serve_fd(int(sys.argv[1]))"
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
            )
            self._conn = Connection(ours.detach())

    def _stop(self) -> int | None:
        proc, conn, self._proc, self._conn = self._proc, self._conn, None, None
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        proc.kill()
        return proc.wait()

    def close(self) -> None:
        with self._lock:
            self._stop()


def serve_fd(fd: int) -> None:
    """The reader process's entry: serve requests on the socket it inherited as ``fd``."""
    serve(Connection(fd))


def serve(conn: Connection) -> None:
    """Answer ``(path, task)`` with ``("ok", array)`` or ``("invalid", reason)`` until the runner hangs up."""
    import resource

    import h5py  # noqa: F401  (imported before the address-space limit is set)

    os.environ["HDF5_PLUGIN_PATH"] = os.devnull  # a file cannot make the library load a filter plug-in
    size = _vm_size()
    if size:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (size + READER_HEADROOM, size + READER_HEADROOM))
    while True:
        try:
            path, task = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", read_y_hat(Path(path), task)))
        except OutputInvalid as exc:
            conn.send(("invalid", str(exc)))
        except MemoryError:
            conn.send(("invalid", "reading it needs more memory than its declared array"))
        except Exception as exc:  # whatever the HDF5 library raises on a broken file
            conn.send(("invalid", f"not a readable HDF5 file ({type(exc).__name__}: {_one_line(exc)})"))


def read_y_hat(path: Path, task: str) -> np.ndarray:
    """Inspect then read dataset ``y_hat`` of an untrusted file (in the reader process)."""
    import h5py

    from ctfm.errors import StoreError
    from ctfm.store import validate_y_hat

    with h5py.File(path, "r", locking=False) as fh:
        ds = _inspect(fh, task)
        arr = np.asarray(ds[()])
    try:
        validate_y_hat(arr, task)
    except StoreError as exc:
        raise OutputInvalid(str(exc)) from None
    return arr


def _inspect(fh: Any, task: str) -> Any:
    """The dataset, once its layout is known to be safe and cheap to read."""
    import h5py

    link = fh.get(DATASET, getlink=True)  # looked at without following it
    if link is None:
        names = ", ".join(list(fh.keys())[:10]) or "none"
        raise OutputInvalid(f"no dataset {DATASET!r} (found: {names})")
    if not isinstance(link, h5py.HardLink):
        raise OutputInvalid(f"{DATASET!r} is a link; store the array in the file itself")
    ds = fh[DATASET]
    if not isinstance(ds, h5py.Dataset):
        raise OutputInvalid(f"{DATASET!r} is a group, not a dataset")
    if ds.is_virtual or ds.external:
        raise OutputInvalid(f"{DATASET!r} reads its data from other files; store the array itself")
    if ds.dtype.kind != "f":
        raise OutputInvalid(f"y_hat has dtype {ds.dtype}; expected a float array")
    want = 1 if task == "lp" else 4
    if ds.shape is None or len(ds.shape) != want:
        layout = "[D]" if task == "lp" else "[D, h, w, l]"
        raise OutputInvalid(f"y_hat has shape {ds.shape}; task {task} expects {want}-D {layout}")
    nbytes = math.prod(ds.shape) * ds.dtype.itemsize
    if nbytes > MAX_Y_HAT_BYTES:
        raise OutputInvalid(f"y_hat of shape {ds.shape} is {nbytes} bytes, over {MAX_Y_HAT_BYTES}")
    if ds.chunks is not None:
        chunks = math.prod(math.ceil(s / c) for s, c in zip(ds.shape, ds.chunks, strict=True))
        if chunks > max(FREE_CHUNKS, nbytes // MIN_CHUNK_BYTES):
            raise OutputInvalid(
                f"y_hat is stored in {chunks} chunks of shape {ds.chunks}; write it contiguous "
                f"(h5py's default) or in chunks of at least {MIN_CHUNK_BYTES} bytes"
            )
    return ds


def _vm_size() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


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
