"""Fetch the public benchmark from the Hugging Face Hub (``hub`` section of configs/benchmark.yaml).

The repo mixes NIfTI and CSV, so files are fetched with ``huggingface_hub.snapshot_download`` and include
patterns, into the shared Hugging Face cache (interrupted downloads resume there, finished files are never fetched
twice), then hard-linked (or copied across file systems) into ``--dest`` keeping the repo's paths. The token comes
from ``HF_TOKEN`` (or a ``huggingface-cli login``); ``HF_HUB_OFFLINE=1`` uses the cache only.

Example:
    >>> result = download_benchmark(Path("data"))  # doctest: +SKIP
    >>> result.root  # doctest: +SKIP
    PosixPath('data/AMOS-clf-tr-val')
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import ConfigError, OfflineError
from ctfm.core.fsutil import link_or_copy


@dataclass(frozen=True)
class DownloadResult:
    """Where the files landed: ``root`` is the benchmark folder to pass to ``ctfm data check``."""

    dest: Path
    root: Path
    snapshot: Path
    files: int
    linked: int
    skipped: int


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _snapshot(
    hub: dict,
    patterns: list[str],
    revision: str | None,
    token: str | None,
    cache_dir: Path | None,
    endpoint: str | None,
) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo = hub["repo_id"]
    try:
        return Path(
            snapshot_download(
                repo_id=repo,
                repo_type=hub.get("repo_type", "dataset"),
                revision=revision,
                allow_patterns=patterns,
                cache_dir=str(cache_dir) if cache_dir else None,
                token=token,
                endpoint=endpoint,
            )
        )
    except (LocalEntryNotFoundError, IncompleteSnapshotError, *_network_errors()) as exc:
        why = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "cannot reach the Hugging Face Hub"
        raise OfflineError(
            f"{why} for {repo} and no complete cached copy exists ({type(exc).__name__}); "
            "connect to the network (and unset HF_HUB_OFFLINE) and re-run: finished files are kept, partial ones resume"
        ) from None
    except (GatedRepoError, RepositoryNotFoundError) as exc:
        raise ConfigError(
            f"no access to {repo} ({type(exc).__name__}); accept its terms on the Hugging Face hub and set HF_TOKEN"
        ) from None
    except RevisionNotFoundError:
        raise ConfigError(
            f"{repo} has no revision {revision!r}; pass an existing branch, tag or commit"
        ) from None


def _link_into(src: Path, dest: Path) -> bool:
    """Hard-link ``src`` to ``dest`` (copy across file systems); False when ``dest`` already matches."""
    real = src.resolve()
    if dest.is_file() and dest.stat().st_size == real.stat().st_size:
        return False
    link_or_copy(real, dest)
    return True


def materialise(snapshot: Path, dest: Path, patterns: Sequence[str]) -> tuple[int, int, int]:
    """Place the snapshot's files matching ``patterns`` under ``dest``; returns (files, linked, skipped)."""
    from huggingface_hub.utils import filter_repo_objects

    rel_paths = sorted(
        p.relative_to(snapshot).as_posix()
        for p in snapshot.rglob("*")
        if p.is_file() and ".cache" not in p.parts
    )
    wanted = list(filter_repo_objects(rel_paths, allow_patterns=list(patterns)))
    linked = sum(_link_into(snapshot / rel, dest / rel) for rel in wanted)
    return len(wanted), linked, len(wanted) - linked


def download_benchmark(
    dest: Path,
    include: Sequence[str] | None = None,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: Path | None = None,
    endpoint: str | None = None,
) -> DownloadResult:
    """Download (or resume) the benchmark files matching ``include`` (default: the config's patterns)."""
    hub = load_benchmark().section("hub")
    patterns = list(include) if include else list(hub.get("include") or ["*"])
    if not patterns or any(not p.strip() for p in patterns):
        raise ConfigError("--include patterns must not be empty")
    token = token or os.environ.get("HF_TOKEN") or None
    snapshot = _snapshot(hub, patterns, revision, token, cache_dir, endpoint)
    dest = Path(dest)
    files, linked, skipped = materialise(snapshot, dest, patterns)
    if files == 0:
        raise ConfigError(f"no file of {hub['repo_id']} matches --include {' '.join(patterns)}")
    sub = hub.get("subfolder")
    root = dest / sub if sub and (dest / sub).is_dir() else dest
    return DownloadResult(
        dest=dest, root=root, snapshot=snapshot, files=files, linked=linked, skipped=skipped
    )
