"""Where the store keeps things, and which names may become folders and files.

Layout (nothing else in ctfm builds these paths)::

    <root>/<model>/<task>/<view>/
        embeddings/<case>.h5      dataset ``y_hat`` exactly as the reference tools read it
        manifest.jsonl            append-only, one JSON CaseRecord per line; the last line of a case wins
        packed/                   contiguous memory-mapped arrays rebuilt only when the manifest changes
        <image>_feature_extraction_time.csv   reference timing file (image: the team tarball's name, acme_lp)
    <root>/<model>/model.json     the model name that owns the folder
"""

from __future__ import annotations

import re

from ctfm.core.errors import StoreError

TASKS = ("lp", "eao")
STATUSES = ("ok", "failed", "timeout")
FULL_VIEW = "full"
MANIFEST = "manifest.jsonl"
EMBEDDINGS = "embeddings"
PACKED = "packed"
MODEL_NAME = "model.json"  # in the model folder: the name that owns it
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_name(name: str) -> str:
    """A model name as a safe folder name: runs of other characters become ``_``, no leading dots."""
    clean = _SAFE.sub("_", str(name).strip()).lstrip("._")
    if not clean:
        raise StoreError(f"model name {name!r} is empty after sanitising; use letters, digits, . _ -")
    return clean


def check_task(task: str) -> str:
    if task not in TASKS:
        raise StoreError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    return task


def check_view(view: str) -> str:
    """``full`` or an ROI disease (or a chest task); a whole-scan disease must use ``full``."""
    if view == FULL_VIEW:
        return view
    from ctfm.core.benchmark import load_benchmark

    bench = load_benchmark()
    if view in bench.roi_diseases or view in bench.chest_tasks:
        return view
    if view in bench.nonroi_diseases:
        raise StoreError(f"{view!r} is a whole-scan disease: its embeddings live in view {FULL_VIEW!r}")
    raise StoreError(
        f"unknown view {view!r}; use {FULL_VIEW!r} or an ROI disease: {', '.join(bench.roi_diseases)}"
    )
