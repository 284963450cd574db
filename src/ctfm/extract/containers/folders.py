"""The host folders of one container run: its inputs (read-only for it), a size-capped output folder and, where
the engine cannot cap a container's writable layer, its scratch: overlays of image folders with capped writes.

Run as root, ctfm mounts a tmpfs with a size and an inode limit on each container's output folder: the
kernel refuses whatever goes over it (files, folders, data in unlinked files alike), nothing of it reaches
the organizers' disk, and removing it is one unmount whatever the container built there (deep folder chains,
a million files, FIFOs). The scratch overlays (see :mod:`~ctfm.extract.containers.scratch`) keep their
writes on one more such tmpfs. Without root the output folder is a plain folder; it is then removed by
:func:`remove_tree`, which walks iteratively through directory descriptors (never by path, never recursing,
never following links), so no depth or name length can stop it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ctfm.core.fsutil import link_or_copy

MNT_DETACH = 2
SCRATCH_BYTES_PER_INODE = 4096  # scratch holds one entry per page it may hold
MS_NOSUID, MS_NODEV = 2, 4
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


@dataclass
class CaseInput:
    case: str
    image: Path
    mask: Path | None = None

    def inputs(self, image_id: str) -> str:
        """What this case's output is made from (see ``case_inputs``): its files and the team's image."""
        from ctfm.extract.inputs import case_inputs

        return case_inputs(self.image, self.mask, image_id)


def mount_tmpfs(path: Path, size: int, inodes: int, mode: int = 0o777, name: bytes = b"ctfm-outputs") -> None:
    """Mount a tmpfs of ``size`` bytes and ``inodes`` entries on ``path`` (root only); the default mode 0777 is
    how the reference runner's ``chmod -R 777`` leaves its output folder."""
    _mount(name, path, b"tmpfs", f"size={size},nr_inodes={inodes},mode={mode:o}")


def mount_overlay(path: Path, lower: Path, upper: Path, work: Path) -> None:
    """Mount an overlay on ``path``: ``lower``'s files, read-only, under the writable ``upper`` (root only)."""
    dirs = {"lowerdir": lower, "upperdir": upper, "workdir": work}
    _mount(b"ctfm-scratch", path, b"overlay", ",".join(f"{k}={_escape(v)}" for k, v in dirs.items()))


def _escape(path: Path) -> str:
    """A path inside overlay options, where ``,`` separates options and ``:`` lower folders."""
    return str(path).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def _mount(source: bytes, path: Path, fstype: bytes, options: str) -> None:
    flags = MS_NOSUID | MS_NODEV
    if _libc.mount(source, os.fsencode(path), fstype, flags, options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype.decode()} on {path}: {os.strerror(err)}")


def probe_mounts(work: Path) -> tuple[bool, bool]:
    """Whether this process may mount a tmpfs, and an overlay of a folder in ``work`` (where image copies go)
    with its writes on a tmpfs (root with the capability to, not e.g. root in a container; a kernel with
    overlayfs; a file system overlayfs can read)."""
    if os.geteuid() != 0:
        return False, False
    probe, lower = Path(work) / ".mount-probe", Path(work) / ".mount-probe-lower"
    probe.mkdir(parents=True, exist_ok=True)
    try:
        mount_tmpfs(probe, 1 << 20, 16)
    except OSError:
        probe.rmdir()
        return False, False
    try:
        lower.mkdir(exist_ok=True)
        dirs = [probe / d for d in ("upper", "work", "merged")]
        for d in dirs:
            d.mkdir()
        mount_overlay(dirs[2], lower, *dirs[:2])
        return True, True
    except OSError:
        return True, False
    finally:
        remove_tree(probe)
        remove_tree(lower)


def unmount(path: Path) -> None:
    """Detach a mount at once (the container is gone; nothing keeps it busy for long)."""
    if _libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unmount {path}: {os.strerror(err)}")


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below ``root`` (deepest first), from this process's mount table."""
    root = Path(root)
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            fields = line.split(" ")
            if len(fields) > 4:
                point = Path(_unescape(fields[4]))
                if point == root or root in point.parents:
                    found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        text = text.replace(code, chr(int(code[1:], 8)))
    return text


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything under it: unmount what is mounted there, then walk through directory
    descriptors with an explicit stack of names, one open directory at a time (no recursion, no path grows
    with depth, links are removed, never followed). Entries that cannot be removed raise the first error."""
    path = Path(path)
    for point in mounts_under(path):
        with contextlib.suppress(OSError):
            unmount(point)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        path.unlink()
        return
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    fd = os.open(path, flags)
    names: list[str] = []  # the folder names from ``path`` down to the one ``fd`` holds
    try:
        while True:
            sub, removed = _clear_files(fd)
            if sub is not None:
                child = os.open(sub, flags, dir_fd=fd)
                os.close(fd)
                fd, names = child, [*names, sub]
                continue
            if removed:
                continue  # list again: a listing that changed under it may have skipped entries
            if not names:
                break
            parent = os.open("..", flags, dir_fd=fd)
            os.close(fd)
            fd = parent
            os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def _clear_files(fd: int) -> tuple[str | None, int]:
    """Unlink the non-folder entries of the folder ``fd`` up to its first sub-folder; return that
    sub-folder's name (None when there is none) and how many entries were unlinked."""
    removed = 0
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                return entry.name, removed
            os.unlink(entry.name, dir_fd=fd)
            removed += 1
    return None, removed


def place_input(src: Path, dest: Path) -> None:
    """Hard-link an input into the container's folder (no copy) when anyone may read it; otherwise (or across
    file systems) a copy with mode 0644, as the reference runner copies its inputs."""
    readable = bool(os.stat(src).st_mode & stat.S_IROTH)
    if not link_or_copy(src, dest, link=readable):
        os.chmod(dest, 0o644)


@dataclass
class RunFolders:
    """``base/inputs`` (the chunk's images, ``fg_masks/`` for an ROI disease), ``base/outputs`` and, with
    scratch overlays, ``base/scratch`` (their upper folders and merged views, on one tmpfs)."""

    base: Path
    binds: list[tuple[Path, str]] = field(default_factory=list)  # (host folder, container folder) of scratch

    @property
    def inputs(self) -> Path:
        return self.base / "inputs"

    @property
    def outputs(self) -> Path:
        return self.base / "outputs"

    @property
    def staging(self) -> Path:
        return self.base / "staging"

    @property
    def scratch(self) -> Path:
        return self.base / "scratch"

    @classmethod
    def prepare(
        cls, base: Path, inputs: Sequence[CaseInput], bounded: bool, size: int, inodes: int
    ) -> RunFolders:
        """Create the folders; with ``bounded`` the output folder is a tmpfs of ``size`` bytes."""
        folders = cls(Path(base))
        folders.inputs.mkdir(parents=True)
        folders.staging.mkdir(mode=0o700)
        masks = folders.inputs / "fg_masks"
        if any(ci.mask is not None for ci in inputs):
            masks.mkdir()
        for ci in inputs:
            place_input(ci.image, folders.inputs / ci.image.name)
            if ci.mask is not None:
                place_input(ci.mask, masks / ci.image.name)
        for d in (folders.base, folders.inputs, *([masks] if masks.is_dir() else [])):
            os.chmod(d, 0o755)
        folders.outputs.mkdir()
        if bounded:
            mount_tmpfs(folders.outputs, size, inodes)
        else:
            os.chmod(folders.outputs, 0o777)
        return folders

    def overlay(self, folders: Sequence[tuple[str, Path]], size: int) -> None:
        """Give each ``(container folder, image copy)`` a fresh writable view of the copy: an overlay whose
        writes land on one tmpfs of ``size`` bytes (root only). The copy itself is never written."""
        if not folders:
            return
        self.scratch.mkdir(mode=0o700)  # only root may reach the merged views from the host
        inodes = max(size // SCRATCH_BYTES_PER_INODE, 1024)
        mount_tmpfs(self.scratch, size, inodes, mode=0o700, name=b"ctfm-scratch")
        for i, (target, lower) in enumerate(folders):
            upper, work, merged = (self.scratch / f"{kind}{i}" for kind in ("upper", "work", "merged"))
            for d in (upper, work, merged):
                d.mkdir()
            st = os.stat(lower)  # the overlay's top folder takes its owner and mode from the upper one
            os.chown(upper, st.st_uid, st.st_gid)
            os.chmod(upper, stat.S_IMODE(st.st_mode))
            mount_overlay(merged, lower, upper, work)
            self.binds.append((merged, target))

    def remove(self) -> None:
        remove_tree(self.base)
