"""An image's files, read without running anything of it: from a created (never started) container.

The engine streams a path of a created container as a tar archive; reading stops at the first member that
answers the question, so a large image costs only the headers read. Used to find what the reference command
needs (``/bin/bash``, the entry script) and the folders scratch must cover (the user's ``$HOME``).
"""

from __future__ import annotations

import contextlib
import io
import tarfile
from collections.abc import Iterator
from typing import Any

from ctfm.extract.containers.engine import labels

PASSWD_MAX_BYTES = 1 << 20
# Shadowing these with an empty $HOME changes nothing for `bash -c` (non-interactive, no login).
SHELL_DOTFILES = frozenset({".bashrc", ".profile", ".bash_logout", ".bash_profile", ".cshrc", ".tcshrc"})


@contextlib.contextmanager
def created(client: Any, image_id: str, kind: str = "inspect", mounts: list | None = None) -> Iterator[str]:
    """A container of ``image_id`` created (with ``mounts``: the engine fills empty volumes with the image's
    files there) and never started; removed on exit. Labelled, so a sweep removes it after a crash."""
    import docker

    created = client.api.create_container(
        image_id,
        entrypoint=["/bin/true"],
        network_disabled=True,
        labels=labels(kind),
        host_config=client.api.create_host_config(network_mode="none", mounts=mounts or None),
    )
    try:
        yield created["Id"]
    finally:
        with contextlib.suppress(docker.errors.APIError):
            client.api.remove_container(created["Id"], force=True)


def image_home(client: Any, image_id: str, env: list[str], user: str) -> tuple[str, bool]:
    """(``$HOME`` the image's user gets, whether the image has files there other than shell start-up files):
    the image's ``HOME`` variable, else its user's ``/etc/passwd`` entry (``/`` without one, as runc does)."""
    variables = dict(e.split("=", 1) for e in env if "=" in e)
    with created(client, image_id) as cid:
        home = variables.get("HOME") or passwd_home(_read_file(client, cid, "/etc/passwd"), user)
        return home, _has_entries(client, cid, home)


def paths_present(client: Any, image_id: str, paths: list[str]) -> dict[str, bool]:
    """Which of ``paths`` exist in the image (parent symlinks such as ``/bin`` -> ``usr/bin`` resolved)."""
    import docker

    found = {}
    with created(client, image_id) as cid:
        for path in paths:
            try:
                stream, _ = client.api.get_archive(cid, path, chunk_size=1 << 16)
            except docker.errors.NotFound:
                found[path] = False
                continue
            with contextlib.suppress(Exception):
                stream.close()
            found[path] = True
    return found


def passwd_home(passwd: str, user: str) -> str:
    """The home folder of ``user`` (a name or uid, optionally ``:group``) in an ``/etc/passwd`` text."""
    name = (user or "root").split(":", 1)[0]
    for line in passwd.splitlines():
        parts = line.split(":")
        if len(parts) >= 6 and name in (parts[0], parts[2]):
            return parts[5] or "/"
    return "/root" if name in ("root", "0") else "/"


def _archive_members(client: Any, cid: str, path: str) -> Iterator[tuple[tarfile.TarInfo, Any]]:
    """Members of the engine's tar of ``path`` in a container, streamed (nothing beyond what is read)."""
    import docker

    try:
        stream, _ = client.api.get_archive(cid, path, chunk_size=1 << 16)
    except docker.errors.NotFound:
        return
    with tarfile.open(fileobj=ChunkReader(stream), mode="r|") as tar:
        for member in tar:
            yield member, tar


def _read_file(client: Any, cid: str, path: str) -> str:
    for member, tar in _archive_members(client, cid, path):
        if member.isfile() and member.size <= PASSWD_MAX_BYTES:
            return tar.extractfile(member).read().decode("utf-8", "replace")
        return ""
    return ""


def _has_entries(client: Any, cid: str, path: str) -> bool:
    """Whether the folder holds more than shell start-up files (stops at the first other entry's header)."""
    members = _archive_members(client, cid, path)
    try:
        for member, _ in members:
            below = member.name.rstrip("/").split("/")[1:]  # the path below the folder itself
            if below and not (len(below) == 1 and below[0] in SHELL_DOTFILES):
                return True
        return False
    finally:
        members.close()


class ChunkReader(io.RawIOBase):
    """A file-like view of the SDK's chunk generator, for :mod:`tarfile` in stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            self._buf = next(self._chunks, b"")
            if not self._buf:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n
