"""The store's own ``<case>.h5`` files: dataset ``y_hat`` in the reference format, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctfm.core.errors import InvalidEmbedding, StoreError
from ctfm.core.fsutil import atomic_path
from ctfm.store.untrusted import DATASET, inspect_y_hat


def read_y_hat(path: Path) -> np.ndarray:
    """Read dataset ``y_hat`` of a file this store wrote; an unreadable file raises :class:`StoreError`.

    Files from elsewhere go through :class:`ctfm.store.untrusted.H5Reader` (:meth:`View.import_file`); the same
    layout checks guard the store's own files in case one was replaced.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as fh:
            return np.asarray(inspect_y_hat(fh)[()])
    except InvalidEmbedding as exc:
        raise StoreError(f"{path}: {exc}") from None
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:  # h5py on a broken file
        raise StoreError(f"{path}: not a readable HDF5 file ({type(exc).__name__}: {exc})") from exc


def write_y_hat(path: Path, arr: np.ndarray) -> None:
    """Write ``y_hat`` atomically in the reference format (one dataset, no compression)."""
    import h5py

    with atomic_path(Path(path), durable=True) as tmp, h5py.File(tmp, "w") as fh:
        fh.create_dataset(DATASET, data=arr)
