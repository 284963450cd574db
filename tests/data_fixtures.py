"""Shared pieces of the data tests: an offline Hugging Face cache in the hub's documented layout."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ctfm.core.benchmark import load_benchmark

COMMIT = "0123456789abcdef0123456789abcdef01234567"
UNREACHABLE_HUB = "http://127.0.0.1:9"  # nothing listens on the discard port: connection refused at once

FILES = {
    "AMOS-clf-tr-val/labels/gallstone.csv": b"case_id,split,gallstone\nA_001.nii.gz,train,1\n",
    "AMOS-clf-tr-val/images/A_001.nii.gz": b"not really a volume",
    "README.md": b"dataset card",
}


def build_offline_cache(cache: Path, files: dict[str, bytes] = FILES) -> Path:
    """The documented hub cache layout: <cache>/datasets--<org>--<name>/{refs/main, blobs/, snapshots/<commit>/}."""
    hub = load_benchmark().section("hub")
    repo = cache / ("datasets--" + hub["repo_id"].replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / COMMIT / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return cache
