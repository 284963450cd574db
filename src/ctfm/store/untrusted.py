"""Reading ``<case>.h5`` files ctfm did not write: a team container's outputs, a folder handed to ``store import``.

Such a file may be a symlink planted to make ctfm read a host file, a FIFO, a folder, huge, not HDF5, a corrupted
HDF5 file that makes the library raise any exception or crash, or a tiny file declaring millions of one-value
chunks that takes minutes to read. So:

- a file is copied into a private staging folder through an ``O_NOFOLLOW`` descriptor, up to a size limit
  (:func:`stage`), so nobody can swap it for a link between the checks and the read;
- the private copy is read in a separate process (:class:`H5Reader`) under an address-space limit and a
  deadline, after its layout is inspected (:func:`inspect_y_hat`: no links, no virtual or external storage, a
  float array of the task's rank and a bounded size, a bounded number of chunks); a hang, crash or exception of
  the HDF5 library there is that file's :class:`~ctfm.core.errors.InvalidEmbedding`, with the reason;
- only the array comes back: callers store it in their own file, never the file's layout.

Example:
    >>> import numpy as np, h5py, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with h5py.File(d / "c1.h5", "w") as f:
    ...     _ = f.create_dataset("y_hat", data=np.ones(4, np.float32))
    >>> with H5Reader() as reader:  # doctest: +SKIP
    ...     reader.read_file(d / "c1.h5", "lp").shape
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
import tempfile
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from ctfm.core.errors import InvalidEmbedding

DATASET = "y_hat"
RANKS = {"lp": 1, "eao": 4}  # lp: a vector [D]; eao: a token map [D, h, w, l]
MAX_Y_HAT_BYTES = 1 << 30  # one case's array in memory: far above any [D, h, w, l] token map
MAX_FILE_BYTES = 1 << 30  # one file on disk
READ_TIMEOUT_S = 60.0  # reading one file, whatever its HDF5 layout
FREE_CHUNKS = 1024  # any chunking up to this many chunks
MIN_CHUNK_BYTES = 4096  # beyond it, chunks must average at least this size
READER_HEADROOM = 4 << 30  # the reader's address space beyond its start-up size


def validate_y_hat(arr: np.ndarray, task: str) -> None:
    """Raise :class:`InvalidEmbedding` unless ``arr`` is what the reference tools accept for ``task``:
    lp a finite float vector ``[D]``, eao a finite float map ``[D, h, w, l]``."""
    if task not in RANKS:
        raise InvalidEmbedding(f"unknown task {task!r}; use one of {', '.join(RANKS)}")
    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidEmbedding(f"y_hat has dtype {arr.dtype}; expected a float array")
    if arr.ndim != RANKS[task]:
        raise InvalidEmbedding(f"y_hat has shape {arr.shape}; task {task} expects {_layout(task)}")
    if arr.size == 0:
        raise InvalidEmbedding(f"y_hat is empty (shape {arr.shape})")
    if not np.isfinite(arr).all():
        raise InvalidEmbedding(f"y_hat holds {int((~np.isfinite(arr)).sum())} NaN/inf value(s)")


def _layout(task: str) -> str:
    return "1-D [D]" if task == "lp" else "4-D [D, h, w, l]"


def inspect_y_hat(fh: Any, task: str | None = None) -> Any:
    """Dataset ``y_hat`` of an open file, once its layout is known to be safe and cheap to read (and, with
    ``task``, of that task's rank); :class:`InvalidEmbedding` says why not."""
    import h5py

    link = fh.get(DATASET, getlink=True)  # looked at without following it
    if link is None:
        names = ", ".join(list(fh.keys())[:10]) or "none"
        raise InvalidEmbedding(f"no dataset {DATASET!r} (found: {names})")
    if not isinstance(link, h5py.HardLink):
        raise InvalidEmbedding(f"{DATASET!r} is a link; store the array in the file itself")
    ds = fh[DATASET]
    if not isinstance(ds, h5py.Dataset):
        raise InvalidEmbedding(f"{DATASET!r} is a group, not a dataset")
    if ds.is_virtual or ds.external:
        raise InvalidEmbedding(f"{DATASET!r} reads its data from other files; store the array itself")
    if ds.dtype.kind != "f":
        raise InvalidEmbedding(f"y_hat has dtype {ds.dtype}; expected a float array")
    if task is not None and (ds.shape is None or len(ds.shape) != RANKS[task]):
        raise InvalidEmbedding(f"y_hat has shape {ds.shape}; task {task} expects {_layout(task)}")
    nbytes = math.prod(ds.shape or ()) * ds.dtype.itemsize
    if nbytes > MAX_Y_HAT_BYTES:
        raise InvalidEmbedding(f"y_hat of shape {ds.shape} is {nbytes} bytes, over {MAX_Y_HAT_BYTES}")
    if ds.chunks is not None:
        chunks = math.prod(math.ceil(s / c) for s, c in zip(ds.shape, ds.chunks, strict=True))
        if chunks > max(FREE_CHUNKS, nbytes // MIN_CHUNK_BYTES):
            raise InvalidEmbedding(
                f"y_hat is stored in {chunks} chunks of shape {ds.chunks}; write it contiguous "
                f"(h5py's default) or in chunks of at least {MIN_CHUNK_BYTES} bytes"
            )
    return ds


def stage(path: Path, staging: Path, max_bytes: int = MAX_FILE_BYTES) -> Path:
    """Copy one file into a private folder, refusing links, special files and files over ``max_bytes``.

    The file's writer may still be running: it could swap a checked file for a symlink to a host file. Copying
    through an ``O_NOFOLLOW`` descriptor first, then checking and reading only the private copy, closes that.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InvalidEmbedding("file missing") from None
    except OSError as exc:  # ELOOP: a symlink; ENXIO: a socket
        raise InvalidEmbedding(f"not a regular file ({exc.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InvalidEmbedding("not a regular file (a folder or special file)")
    with os.fdopen(fd, "rb") as src:
        if st.st_size > max_bytes:
            raise InvalidEmbedding(f"the file is {st.st_size} bytes, over the limit of {max_bytes}")
        staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        dest = staging / Path(path).name
        with dest.open("wb") as out:  # the caller's own disk: its errors are the caller's, raised as such
            copied = 0
            while block := _read_block(src):
                copied += len(block)
                if copied > max_bytes:
                    raise InvalidEmbedding(f"the file grew over the limit of {max_bytes} bytes")
                out.write(block)
    return dest


def _read_block(src: Any) -> bytes:
    try:
        return src.read(1 << 20)
    except OSError as exc:
        raise InvalidEmbedding(f"the file could not be read ({exc.strerror})") from None


class H5Reader:
    """Reads HDF5 files in a child process with a deadline per file; a file that hangs or crashes the reader
    fails alone, and the next read starts a fresh reader. Safe to share between threads."""

    def __init__(self, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._staging: tempfile.TemporaryDirectory | None = None

    def read_file(
        self, path: Path, task: str, staging: Path | None = None, max_bytes: int = MAX_FILE_BYTES
    ) -> np.ndarray:
        """``y_hat`` of a file from elsewhere: staged (into ``staging``, by default a private temporary
        folder), then read; the staged copy is removed."""
        if staging is None:
            with self._lock:
                if self._staging is None:
                    self._staging = tempfile.TemporaryDirectory(prefix="ctfm-staging-")
            staging = Path(self._staging.name)
        staged = stage(path, staging, max_bytes)
        try:
            return self.read(staged, task)
        finally:
            staged.unlink(missing_ok=True)

    def __enter__(self) -> H5Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, path: Path, task: str) -> np.ndarray:
        """``y_hat`` of a file already staged (see :func:`stage`)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            try:
                self._conn.send((str(path), task))
                if not self._conn.poll(self.timeout_s):
                    self._stop()
                    raise InvalidEmbedding(f"reading it took over {self.timeout_s:g} s; reader stopped")
                status, payload = self._conn.recv()
            except (EOFError, OSError):
                code = self._stop()
                raise InvalidEmbedding(f"reading it crashed the HDF5 reader (exit code {code})") from None
        if status != "ok":
            raise InvalidEmbedding(payload)
        return payload

    def _start(self) -> None:
        """A fresh interpreter (never a fork of a process that runs threads), talking over a socket pair."""
        self._stop()
        ours, theirs = socket.socketpair()
        with ours, theirs:
            code = f"import sys; from {__name__} import serve_fd; serve_fd(int(sys.argv[1]))"
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},  # this very ctfm
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
            if self._staging is not None:
                self._staging.cleanup()
                self._staging = None


def serve_fd(fd: int) -> None:
    """The reader process's entry: serve requests on the socket it inherited as ``fd``."""
    serve(Connection(fd))


def serve(conn: Connection) -> None:
    """Answer ``(path, task)`` with ``("ok", array)`` or ``("invalid", reason)`` until the caller hangs up."""
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
            conn.send(("ok", load_checked(Path(path), task)))
        except InvalidEmbedding as exc:
            conn.send(("invalid", str(exc)))
        except MemoryError:
            conn.send(("invalid", "reading it needs more memory than its declared array"))
        except Exception as exc:  # whatever the HDF5 library raises on a broken file
            conn.send(("invalid", f"not a readable HDF5 file ({type(exc).__name__}: {_one_line(exc)})"))


def load_checked(path: Path, task: str) -> np.ndarray:
    """Inspect then read dataset ``y_hat`` of an untrusted file (in the reader process)."""
    import h5py

    with h5py.File(path, "r", locking=False) as fh:
        arr = np.asarray(inspect_y_hat(fh, task)[()])
    validate_y_hat(arr, task)
    return arr


def _vm_size() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")
