"""Where a container may write in its own file system, and the kernel's cap on it, chosen per engine and image.

The reference runner gives a container a writable image (its writable layer), unbounded. ctfm gives it as much
of that as the kernel can cap at ``--scratch``:

- **the whole image**, where the engine caps a container's writable layer (``--storage-opt size``: overlay2
  on xfs with ``pquota``, btrfs, zfs): exactly the reference's file system;
- **the image's working directory, $HOME, /tmp and /var/tmp**, elsewhere when ctfm runs as root (e.g. overlay2
  on ext4): the image is read-only, and each of these folders is an overlay of the image's own files there
  with its writes on one tmpfs of ``--scratch`` bytes per container. The files are copied out of the image
  once per team, by the engine itself (it fills an empty volume with the image's files at that path: owners,
  modes and links as in the image), into the runner's work folder. So a container sees its files, writes
  caches beside its code, under ``$HOME`` and in ``/tmp`` (exec allowed), starts from a fresh copy as under
  ``--rm``, and nothing is copied per container: weights beside the code cost one disk copy per team, not a
  copy and their size in memory per container. What a container writes there is memory (tmpfs) and counts
  against its ``--memory``; changing an image file copies it whole into the tmpfs (overlayfs copy-up);
- **/tmp and $HOME**, empty tmpfs (exec allowed, mode 1777), when ctfm cannot mount (not root); ``$HOME`` stays
  read-only when the image has files there.

What is not writable is said once per engine (:meth:`Engine.notes`) and per image (:attr:`Scratch.note`), and
a container that failed on it gets the reason in its cases' error (:meth:`Scratch.hint`).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import ContainerError
from ctfm.extract.containers.engine import Engine, RunSettings, labels, parse_bytes
from ctfm.extract.containers.folders import remove_tree
from ctfm.extract.containers.imagefs import created, image_home
from ctfm.extract.containers.tarballs import TeamImage

TMP_DIRS = ("/tmp", "/var/tmp")  # writable for every user, as in any image
READ_ONLY = "Read-only file system"
OUT_OF_SPACE = ("No space left on device", "Disk quota exceeded")


@dataclass
class Scratch:
    """One image's scratch: its container options and, in the overlay case, the folders each container
    overlays with the host copies of the image's files there."""

    options: dict[str, Any]  # read_only, storage_opt or tmpfs for ``containers.create``
    writable: str  # where the container may write in its own file system, for messages
    overlays: list[tuple[str, Path]] = field(default_factory=list)  # (container folder, host copy)
    size: int = 0  # bytes of each container's tmpfs under its overlays
    note: str = ""  # said once: what this image loses against the reference's writable image
    copies: Path | None = None  # the host folder of the copies, removed by :meth:`release`

    def hint(self, log_tail: str, settings: RunSettings) -> str:
        """Why a container that failed may have failed on its file system, judged from its last log lines."""
        if READ_ONLY in log_tail:
            return f"it wrote where it may not ({READ_ONLY}): here it may write {self.writable}"
        if any(err in log_tail for err in OUT_OF_SPACE):
            return (
                f"it ran out of space: its own file system is capped at {settings.scratch}, its outputs at "
                f"{settings.max_output_bytes >> 20} MiB a case"
            )
        return ""

    def release(self) -> None:
        """Remove the host copies of the image's folders (when no container of the image runs any more)."""
        if self.copies is not None:
            remove_tree(self.copies)
            self.copies = None


def plan_scratch(client: Any, engine: Engine, image: TeamImage, settings: RunSettings, work: Path) -> Scratch:
    """The scratch ``image`` gets from this engine; in the overlay case its folders are copied into ``work``."""
    size = parse_bytes(settings.scratch, "--scratch")
    contract = load_benchmark().section("container")
    outputs = contract["output_dir"]
    if engine.quota:
        storage = {"size": str(engine.storage_size(settings, image.size))}
        return Scratch({"read_only": False, "storage_opt": storage}, f"anywhere but {contract['input_dir']}")
    home, populated = image_home(client, image.image_id, image.env, image.user)
    if engine.overlay:
        folders, refused = writable_folders(image.workdir, home)
        where = f"{_listing(folders)} and {outputs}"
        note = f"{image.team}: {'; '.join(refused)} (writable: {where})" if refused else ""
        scratch = Scratch({"read_only": True}, where, size=size, note=note, copies=work / _short(image))
        scratch.overlays = list(
            zip(folders, copy_folders(client, image, folders, scratch.copies), strict=True)
        )
        return scratch
    opts = f"rw,exec,nosuid,nodev,size={size},mode=1777"
    tmpfs = {"/tmp": opts}
    note = ""
    if populated:
        note = f"{image.team}: $HOME {home} holds files in the image; on this engine it stays read-only"
    elif home not in ("/", "/tmp"):
        tmpfs[home] = opts
    return Scratch({"read_only": True, "tmpfs": tmpfs}, f"{_listing(list(tmpfs))} and {outputs}", note=note)


def writable_folders(workdir: str, home: str) -> tuple[list[str], list[str]]:
    """The folders to overlay for an image (its working directory, ``$HOME``, /tmp, /var/tmp; one folder
    inside another is covered by it) and why any of them is left read-only."""
    contract = load_benchmark().section("container")
    mounts = (contract["input_dir"], contract["output_dir"])
    folders: list[str] = []
    refused: list[str] = []
    for label, path in (("working directory", workdir), ("$HOME", home), *((d, d) for d in TMP_DIRS)):
        path = posixpath.normpath(posixpath.join("/", path or "/"))
        if path == "/":
            refused.append(f"its {label} is /, which cannot be overlaid: it stays read-only")
        elif any(_within(path, m) for m in mounts):
            continue  # ctfm's own mounts (inputs stay read-only, outputs are writable)
        elif not any(_within(path, f) for f in folders):
            folders = [f for f in folders if not _within(f, path)] + [path]
    return sorted(folders), refused


def copy_folders(client: Any, image: TeamImage, folders: list[str], dest: Path) -> list[Path]:
    """Copy the image's files in ``folders`` to ``dest/0``, ``dest/1``...: the engine fills each empty volume
    bound to those host folders with the image's files at its mount point when a container is created."""
    from docker.types import Mount

    import docker

    dest.mkdir(parents=True, mode=0o700)  # setuid files of an image must not be reachable by host users
    copies, volumes = [], []
    try:
        for i, folder in enumerate(folders):
            copy = dest / str(i)
            copy.mkdir()
            os.chmod(copy, 0o1777 if folder in TMP_DIRS else 0o755)  # a folder the image lacks
            copies.append(copy)
            options = {"type": "none", "o": "bind", "device": str(copy)}
            name = f"ctfm-scratch-{uuid.uuid4().hex[:12]}"
            volumes.append(
                client.volumes.create(name, driver="local", driver_opts=options, labels=labels("copy"))
            )
        with created(
            client, image.image_id, "copy", [Mount(f, v.name) for f, v in zip(folders, volumes, strict=True)]
        ):
            pass
    except docker.errors.APIError as exc:
        remove_tree(dest)
        reason = " ".join(str(getattr(exc, "explanation", None) or exc).split())
        raise ContainerError(
            f"could not copy {_listing(folders)} out of the image for its scratch: {reason}"
        ) from None
    finally:
        for volume in volumes:
            with contextlib.suppress(docker.errors.APIError):
                volume.remove(force=True)
    return copies


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _listing(folders: list[str]) -> str:
    return ", ".join(folders) or "nothing"


def _short(image: TeamImage) -> str:
    return "image-" + image.image_id.split(":")[-1][:12]
