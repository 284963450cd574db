"""Running the real ``ctfm`` CLI from tests, and reading the wandb run files it writes (importable by name:
tests/ is on sys.path via conftest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_cli(
    *args: str,
    cwd: Path | None = None,
    check: bool = True,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the real ``ctfm`` CLI in a subprocess, as a user would (``env``: variables added to ours)."""
    proc = subprocess.run(
        [sys.executable, "-m", "ctfm.cli.main", *map(str, args)],
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"ctfm {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


_WANDB_BLOCK = 32768


def wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` run file: a 7-byte ``:W&B`` header, then LevelDB log framing (32 KiB blocks;
    each chunk: crc 4 bytes, length 2 bytes little-endian, type 1 byte: 1 full, 2 first, 3 middle, 4 last)
    around ``wandb_internal_pb2.Record`` messages. wandb ships no Python reader for it any more."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file ({len(data)} bytes)"
    pos, parts, records = 7, [], []
    while pos + 7 <= len(data):
        if _WANDB_BLOCK - pos % _WANDB_BLOCK < 7:  # block trailer: padding
            pos += _WANDB_BLOCK - pos % _WANDB_BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        parts.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
            parts = []
    return records


def wandb_logged(records: list, kind: str) -> list[dict]:
    """Key -> value of every ``history`` item list or ``summary`` update in the run file (wandb writes a key
    either as ``key`` or as the parts of ``nested_key``)."""
    items = {"history": lambda r: r.history.item, "summary": lambda r: r.summary.update}[kind]
    return [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items(r)}
        for r in records
        if r.WhichOneof("record_type") == kind
    ]


def wandb_summary(records: list) -> dict:
    """The run's final summary: every ``summary`` update applied in order."""
    return {k: v for update in wandb_logged(records, "summary") for k, v in update.items()}
