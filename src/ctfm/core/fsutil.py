"""Small filesystem helpers shared by every stage: atomic writes, links and file stamps."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def _file_mode() -> int:
    """The mode a plain ``open(..., "w")`` would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_path(dest: Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it replaces ``dest`` in one rename.

    An interrupted or failed write leaves ``dest`` untouched (absent or its old content), never half-written.
    The temporary name keeps ``dest``'s suffixes so writers that dispatch on them (``.nii.gz``) still work.
    The file gets the usual permissions (not the temporary file's private 0600), and ``durable`` flushes
    it to disk before the rename so a power loss cannot leave a renamed but empty file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(dest.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".part{suffix}", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)
        if durable:
            fd = os.open(tmp_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp_path, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_text_atomic(dest: Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(dest: Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def link_or_copy(src: Path, dest: Path, link: bool = True) -> bool:
    """Place ``src`` at ``dest`` in one rename: a hard link where the file system allows (no copy; the shared
    file's permissions are left alone), else a copy with the usual permissions. Returns whether it linked."""
    dest = Path(dest)
    if link:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        os.close(fd)
        os.unlink(tmp)
        try:
            os.link(src, tmp)
            os.replace(tmp, dest)
            return True
        except OSError:  # another file system, a link limit, or not allowed: copy instead
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    with atomic_path(dest) as tmp_path:
        shutil.copyfile(src, tmp_path)
    return False


def file_stamp(path: Path) -> tuple[str, int, int]:
    """(name, size, mtime in ns): a cheap sign that a file changed, even when replaced by an older copy
    (``cp -p``, ``rsync -a`` and ``tar x`` keep the source's time, but rarely its size and time both)."""
    st = Path(path).stat()
    return (Path(path).name, st.st_size, st.st_mtime_ns)


def is_partial(path: Path) -> bool:
    """True for temporaries left by :func:`atomic_path` (they are never real outputs)."""
    return path.name.startswith(".") and ".part" in path.name


LOCK_NAME = ".ctfm.lock"


@contextlib.contextmanager
def exclusive_use(folder: Path) -> Iterator[None]:
    """Hold ``<folder>/.ctfm.lock`` while writing there: a second ctfm process on the same folder is refused
    with one line (two writers would do the work twice and delete each other's temporaries)."""
    from ctfm.core.errors import DataError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no advisory locks
        yield
        return
    with (folder / LOCK_NAME).open("a+") as fh:
        try:  # a POSIX record lock: held by this process only, so workers it forked never keep it alive
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise DataError(
                f"{folder}: in use by another ctfm process (pid {holder}); wait for it or use another folder"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.lockf(fh, fcntl.LOCK_UN)


ABANDONED_S = 3600.0  # a temporary untouched this long has no writer left (writers touch it continuously)


def remove_partials(folder: Path, older_than: float | None = None) -> None:
    """Delete the temporaries a killed writer left under ``folder``: all of them where no writer can run,
    or (``older_than`` seconds) only those nobody has written to for that long, where another run may."""
    now = time.time()
    for path in Path(folder).rglob(".*.part*"):
        with contextlib.suppress(FileNotFoundError):
            stale = older_than is None or now - path.stat().st_mtime > older_than
            if stale and is_partial(path) and path.is_file():
                path.unlink(missing_ok=True)
