"""Mutations of a valid ``<case>.h5`` output, as hostile or broken containers leave them (seeded, stdlib only).

Used inside the fuzz test image (``tool.py`` MODE=fuzz) and by the unit fuzz test, so both see the same
mutants: byte flips and truncations of the HDF5 file (the library may raise anything, hang or crash on them),
the file replaced by a folder (empty, a deep chain, many files), a symlink or a FIFO, plus stray structures
beside it.
"""

import os
import random
from pathlib import Path

KINDS = ("flip", "flip", "flip", "flip", "truncate", "folder", "deep", "many", "symlink", "fifo", "stray")


def mutate(path: Path, seed: int) -> str:
    """Mutate ``path`` in place according to ``seed``; return the kind of mutation."""
    rng = random.Random(seed)
    kind = KINDS[seed % len(KINDS)]
    path = Path(path)
    if kind == "flip":
        data = bytearray(path.read_bytes())
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= rng.randint(1, 255)
        path.write_bytes(bytes(data))
    elif kind == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: rng.randrange(len(data))])
    elif kind in ("folder", "deep", "many"):
        path.unlink()
        path.mkdir()
        if kind == "deep":
            _chain(path, 40)
        elif kind == "many":
            for i in range(500):
                (path / f"f{i}").write_bytes(b"")
    elif kind == "symlink":
        path.unlink()
        os.symlink("/etc/passwd", path)
    elif kind == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif kind == "stray":  # the output stays valid; odd things lie beside it
        stray = path.parent / f"stray-{seed}"
        stray.mkdir()
        _chain(stray, 20)
        os.mkfifo(path.parent / f"fifo-{seed}")
        os.symlink("/", path.parent / f"link-{seed}")
        (path.parent / f"bad\nname\x1b[31m-{seed}").write_bytes(b"")
    return kind


def _chain(top: Path, depth: int) -> None:
    """A ``depth``-deep folder chain, made with relative steps (its full path may exceed PATH_MAX)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
