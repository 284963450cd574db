"""Token batches for task 2: cases of the store's packed token cache read batch by batch, padded.

Cases with different grids are padded in a batch with a key-padding mask, never resized; training batches
are formed from cases of similar length so padding stays small.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch

from ctfm.core.errors import ConfigError, DataError
from ctfm.store import PackedEAO, to_float32


@dataclass
class TokenBatch:
    """A padded batch: tokens [B, T, D] float32 and key_padding_mask [B, T] (True = padding; None when the
    batch's cases have equal token counts, so the heads skip masking)."""

    tokens: torch.Tensor
    mask: torch.Tensor | None

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens and mask on ``device``."""
        return self.tokens.to(device), None if self.mask is None else self.mask.to(device)


class TokenReader:
    """Reads cases of a flattened token array ``[sum n_i, D]`` batch by batch, padded.

    ``tokens`` may be float16/bfloat16 on disk; batches are float32. For a file-backed memmap (the store's
    cache) each case is read with ``os.pread`` rather than through the mapping, so the cache's pages stay in
    the kernel's page cache instead of this process's resident memory: only one batch is held at a time.
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, dtype: str = "float32") -> None:
        self.tokens = tokens
        self.dtype = dtype
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.diff(self.offsets)
        if len(self.lengths) and self.lengths.min() < 1:
            bad = int(np.argmin(self.lengths))
            raise ConfigError(f"packed token cache: case row {bad} has no tokens; rebuild the store's cache")
        self._fd: int | None = None
        filename = getattr(tokens, "filename", None)
        if isinstance(tokens, np.memmap) and filename and tokens.flags.c_contiguous:
            self._fd = os.open(filename, os.O_RDONLY)
            self._base = int(tokens.offset)
            self._row_bytes = int(tokens.shape[1]) * tokens.dtype.itemsize

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    @classmethod
    def from_packed(cls, packed: PackedEAO) -> TokenReader:
        return cls(packed.tokens, packed.offsets, packed.dtype)

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def longest(self) -> int:
        """Token count of the longest case (0 when empty): what sizes the largest padded batch."""
        return int(self.lengths.max(initial=0))

    def __len__(self) -> int:
        return len(self.lengths)

    def _raw(self, row: int) -> np.ndarray:
        start, stop = int(self.offsets[row]), int(self.offsets[row + 1])
        if self._fd is None:
            return self.tokens[start:stop]
        size = (stop - start) * self._row_bytes
        buf = os.pread(self._fd, size, self._base + start * self._row_bytes)
        if len(buf) != size:
            raise DataError(f"packed token cache {self.tokens.filename} is truncated; rebuild it")
        return np.frombuffer(buf, dtype=self.tokens.dtype).reshape(stop - start, self.dim)

    def case(self, row: int) -> np.ndarray:
        return to_float32(self._raw(row), self.dtype)

    def batch(self, rows: np.ndarray) -> TokenBatch:
        rows = np.asarray(rows, dtype=np.int64)
        n = self.lengths[rows]
        out = np.zeros((len(rows), int(n.max()), self.dim), dtype=np.float32)
        mask = np.ones((len(rows), int(n.max())), dtype=bool)
        for i, r in enumerate(rows):
            out[i, : n[i]] = to_float32(self._raw(int(r)), self.dtype)
            mask[i, : n[i]] = False
        return TokenBatch(torch.from_numpy(out), torch.from_numpy(mask) if mask.any() else None)


def bucketed_batches(
    rows: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator, window: int = 16
) -> list[np.ndarray]:
    """Split an epoch's sample order into batches of cases with similar token counts.

    The order is cut into windows of ``window`` batches, each window sorted by length and cut into batches,
    and the batch order shuffled: padding stays small while sampling stays random.
    """
    rows = np.asarray(rows)
    batches: list[np.ndarray] = []
    span = batch_size * window
    for start in range(0, len(rows), span):
        chunk = rows[start : start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    if len(np.unique(lengths[rows])) > 1:
        order = rng.permutation(len(batches))
        batches = [batches[i] for i in order]
    return batches


def eval_batches(rows: np.ndarray, lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Deterministic evaluation batches, sorted by length so padding is minimal."""
    rows = np.asarray(rows)[np.argsort(lengths[rows], kind="stable")]
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
