"""Team images: ``<team>_lp.tar.gz`` tarballs loaded without touching any tag, and the reference naming rule.

The reference runner loads ``acme_lp.tar.gz`` with ``docker image load`` and starts ``acme_lp:latest`` (the file
name before its first dot, lower-cased). ``docker load`` moves every tag named in the tarball onto the loaded
image, so a tarball claiming another image's tag (an organizer's, another team's) would take it over. ctfm
never lets the engine see those names: the tarball is streamed to the engine with its tags removed
(``manifest.json`` ``RepoTags``, ``index.json`` name annotations, the legacy ``repositories`` file), the image
loads untagged, and ctfm runs and records it by its id. No tag changes at any moment, so a runner killed
during a load leaves every tag where it was. The tarball's own tags are read on the way, to check the naming
rule (``ctfm check-container`` fails a tarball the reference runner could not start).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import ContainerError, DataError

MANIFEST_MAX_BYTES = 8 << 20
NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
BLOCK = tarfile.BLOCKSIZE
_REPO_OK = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")


@dataclass
class TeamImage:
    """A team's image as the engine knows it: the id is what runs and what the manifest records."""

    team: str  # the store model
    name: str  # the reference's image name: `acme_lp` for acme_lp.tar.gz, the repository of a tag
    image_id: str
    tags: list[str]  # the tarball's (or the engine's) tags; ctfm never applies a tarball's tags
    size: int
    source: str  # tarball path or the tag given
    entrypoint: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""
    env: list[str] = field(default_factory=list)
    loaded: bool = False  # True when this runner added the image (removed afterwards unless kept)

    @classmethod
    def from_engine(cls, img: Any, team: str, name: str, tags: list[str], source: str) -> TeamImage:
        config = img.attrs.get("Config") or {}
        return cls(
            team=team,
            name=name,
            image_id=img.id,
            tags=tags,
            size=int(img.attrs.get("Size", 0)),
            source=source,
            entrypoint=list(config.get("Entrypoint") or []),
            workdir=str(config.get("WorkingDir") or "/"),
            user=str(config.get("User") or ""),
            env=list(config.get("Env") or []),
        )


def reference_name(tarball: Path) -> str:
    """The image the reference runner starts for a tarball (before ``:latest``)."""
    return Path(tarball).name.split(".")[0].lower()


def team_from_tag(tag: str) -> str:
    """``registry/ns/acme:v2`` -> ``acme``: a team name for an image given by tag."""
    name = tag.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0] or tag


def discover_tarballs(folder: Path, task: str) -> dict[str, Path]:
    """``<team>_<task>.tar.gz`` files of a submissions folder, by team; hidden files (a macOS ``._`` copy, a
    download's temporary) are no team's, as hidden files are no case's."""
    suffix = load_benchmark().section("container")["tarball_suffix"][task]
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of <team>{suffix} tarballs")
    found = {
        p.name[: -len(suffix)]: p
        for p in sorted(folder.glob(f"*{suffix}"))
        if p.is_file() and not p.name.startswith(".")
    }
    if not found:
        raise DataError(f"{folder}: no <team>{suffix} tarball found (task {task})")
    return found


def naming_problems(tarball: Path, tags: list[str], task: str) -> list[str]:
    """Why the reference runner would not run this tarball's image for ``task`` (empty when it would)."""
    suffix = load_benchmark().section("container")["tarball_suffix"][task]
    name = reference_name(tarball)
    problems = []
    if not Path(tarball).name.endswith(suffix):
        problems.append(f"the reference runner loads only *{suffix} files for task {task}")
    if not _REPO_OK.fullmatch(name):
        problems.append(f"{name!r} (the file name before its first dot) is not a valid image name")
    want = f"{name}:latest"
    if want not in {t.removeprefix("docker.io/").removeprefix("library/") for t in tags}:
        problems.append(
            f"the reference runner starts {want}, but the tarball tags its image "
            f"{', '.join(tags) or '(no tag)'}: `docker tag IMAGE {want} && docker save {want} | gzip > "
            f"{Path(tarball).name}`"
        )
    return problems


def load_tarball(
    client: Any, tarball: Path, team: str, log: Callable[[str], None] = lambda m: None
) -> TeamImage:
    """Load a ``docker save`` tarball (gzipped or not) untagged; the image to run is the one the reference
    would start (tagged ``<name>:latest``), else the first. Other images of the tarball are removed."""
    tarball = Path(tarball)
    if not tarball.is_file():
        raise DataError(f"{tarball}: tarball not found")
    before = {i.id for i in client.images.list(all=True)}
    seen: dict[str, Any] = {}
    try:
        loaded = client.images.load(untagged_stream(tarball, seen))
    except Exception as exc:  # gzip, tar, JSON or engine errors: this team's tarball is unusable
        cause = seen.get("error") or exc
        raise ContainerError(
            f"{tarball}: docker load failed ({type(cause).__name__}: {cause}); is it a `docker save` tarball?"
        ) from None
    entries = [e for e in seen.get("manifest.json") or [] if isinstance(e, dict)]
    if not loaded:
        raise ContainerError(f"{tarball}: docker load reported no image")
    by_id = {img.id: img for img in loaded}
    want = f"{reference_name(tarball)}:latest"
    chosen = next((e for e in entries if want in (e.get("RepoTags") or [])), entries[0] if entries else {})
    image_id = _config_id(chosen)
    img = by_id.get(image_id, loaded[0])
    tags = list(chosen.get("RepoTags") or []) if image_id in by_id else []
    if len(by_id) > 1:
        log(
            f"{tarball.name}: holds {len(by_id)} images; running {img.id[:19]} ({', '.join(tags) or 'untagged'})"
        )
    for other in by_id.values():
        if other.id != img.id and other.id not in before:
            with contextlib.suppress(Exception):
                client.images.remove(other.id)
    image = TeamImage.from_engine(img, team, reference_name(tarball), tags, str(tarball))
    image.loaded = img.id not in before
    return image


def resolve_tag(client: Any, tag: str, team: str | None = None) -> TeamImage:
    """An image already in the engine, by tag or id."""
    import docker

    try:
        img = client.images.get(tag)
    except docker.errors.ImageNotFound:
        raise ContainerError(f"image {tag!r} is not in the local engine; `docker load` it first") from None
    return TeamImage.from_engine(img, team or team_from_tag(tag), team_from_tag(tag), list(img.tags), tag)


def release(client: Any, image: TeamImage, keep: bool, log: Callable[[str], None] = lambda m: None) -> None:
    """Remove an image this runner loaded; or keep it, giving it the tarball's tags that are still free."""
    if not image.loaded:
        return
    if not keep:
        with contextlib.suppress(Exception):
            client.images.remove(image.image_id)
        return
    from docker.utils import parse_repository_tag

    import docker

    for tag in image.tags:
        try:
            taken = client.images.get(tag).id != image.image_id
        except docker.errors.ImageNotFound:
            taken = False
        if taken:
            log(
                f"{image.team}: tag {tag} names another image; the kept image {image.image_id[:19]} is untagged"
            )
            continue
        client.api.tag(image.image_id, *parse_repository_tag(tag))


def _config_id(entry: dict[str, Any]) -> str:
    """``<hex>.json`` or ``blobs/sha256/<hex>`` (a manifest entry's config) -> ``sha256:<hex>``."""
    config = str(entry.get("Config", ""))
    return "sha256:" + config.rsplit("/", 1)[-1].removesuffix(".json") if config else ""


def _strip_names(name: str, data: Any) -> Any:
    """The manifest or OCI index without any image name the engine would tag."""
    data = copy.deepcopy(data)
    if name == "manifest.json" and isinstance(data, list):
        for entry in data:
            if isinstance(entry, dict):
                entry["RepoTags"] = []
    elif name == "index.json" and isinstance(data, dict):
        for entry in data.get("manifests") or []:
            if isinstance(entry, dict) and isinstance(entry.get("annotations"), dict):
                for key in NAME_ANNOTATIONS:
                    entry["annotations"].pop(key, None)
    return data


def untagged_stream(tarball: Path, seen: dict[str, Any], chunk: int = 1 << 20) -> Iterator[bytes]:
    """The tarball as an uncompressed tar stream with every image name removed (see the module doc).
    ``seen`` receives the original ``manifest.json`` and ``index.json`` and, on failure, the error."""
    try:
        with tarfile.open(tarball, "r|*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name == "repositories":
                    continue
                if name in ("manifest.json", "index.json") and member.isfile():
                    if member.size > MANIFEST_MAX_BYTES:
                        raise ContainerError(f"{name} is {member.size} bytes; not a docker save tarball")
                    seen[name] = json.loads(tar.extractfile(member).read())
                    payload = json.dumps(_strip_names(name, seen[name])).encode()
                    member = copy.copy(member)
                    member.size = len(payload)
                    yield member.tobuf(tarfile.PAX_FORMAT) + payload + _padding(len(payload))
                    continue
                yield member.tobuf(tarfile.PAX_FORMAT)
                if member.isfile():
                    src = tar.extractfile(member)
                    while block := src.read(chunk):
                        yield block
                    yield _padding(member.size)
        yield b"\0" * (2 * BLOCK)
    except Exception as exc:
        seen["error"] = exc
        raise


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)
