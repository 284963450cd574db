"""Content hashes: of a file's bytes (checksums in manifests) and of settings (what an output was built from).

Example:
    >>> digest({"margin": 2.0, "organs": ["liver"]}) == digest({"organs": ["liver"], "margin": 2.0})
    True
    >>> len(digest([1, 2])), len(digest([1, 2], length=12))
    (16, 12)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes, read in chunks (volumes do not have to fit in memory)."""
    sha = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            sha.update(block)
    return sha.hexdigest()


def digest(value: Any, length: int = 16) -> str:
    """A short stable hash of a JSON-able value (settings, file stamps, stage keys): equal values give equal
    digests whatever the key order; paths and other objects count by their ``str``."""
    blob = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:length]
