"""Test extractor for the docker tests: a tiny deterministic embedding, plus misbehaviours chosen by MODE.

MODE (baked into each test image): good, hang, crash, nan, junk, net, fill (writes 100 MiB of stray data, then
hangs), hog (touches HOG_MIB MiB of memory, default 1 GiB), slow (SLOW seconds per case). BAD_CASE names the case a
misbehaving image picks on (default: the second case in sorted order). DELAY seconds are spent on every case
in any mode, so outputs arrive apart.
"""

import os
import socket
import sys
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

MODE = os.environ.get("MODE", "good")
TASK = sys.argv[1] if len(sys.argv) > 1 else "lp"
inp = Path(os.environ.get("INPUT_DIR", "/workspace/inputs"))
out = Path(os.environ.get("OUTPUT_DIR", "/workspace/outputs"))
masks = os.environ.get("MASKS_DIR", "")
cases = sorted(p for p in inp.glob("*.nii.gz"))
bad = os.environ.get("BAD_CASE", "")


def embed(path: Path) -> np.ndarray:
    vol = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    if masks:
        m = np.asarray(nib.load(str(Path(masks) / path.name)).dataobj) > 0
        vol = vol * m
    stats = np.array(
        [vol.mean(), vol.std(), vol.min(), vol.max(), np.median(vol), (vol > 0).mean()], np.float32
    )
    if TASK == "lp":
        return stats
    return np.broadcast_to(stats[:, None, None, None], (6, 2, 2, 2)).copy()


def write(case: str, arr: np.ndarray) -> None:
    with h5py.File(out / f"{case}.h5", "w") as fh:
        fh.create_dataset("y_hat", data=arr)


if MODE == "net":
    for target in (("1.1.1.1", 53), ("example.com", 80)):
        try:
            socket.create_connection(target, timeout=2).close()
            print(f"NETWORK REACHABLE {target}", flush=True)
        except OSError as exc:
            print(f"network blocked {target}: {exc}", flush=True)
print(f"tool mode={MODE} task={TASK} cases={len(cases)} masks={bool(masks)}", flush=True)
for path in cases:
    case = path.name[: -len(".nii.gz")]
    is_bad = case == bad
    if MODE == "hang" and is_bad:
        time.sleep(3600)
    if MODE == "hog" and is_bad:
        size = int(os.environ.get("HOG_MIB", "1024")) << 20
        hog = bytearray(size)
        hog[:: 1 << 12] = b"\1" * (size >> 12)
    if MODE == "fill" and is_bad:
        with open(out / "filler.bin", "wb") as fh:
            for _ in range(100):
                fh.write(b"\1" * (1 << 20))
        time.sleep(3600)
    if MODE == "crash" and is_bad:
        print(f"crashing on {case}", file=sys.stderr, flush=True)
        sys.exit(3)
    if MODE == "slow":
        time.sleep(float(os.environ.get("SLOW", "1")))
    time.sleep(float(os.environ.get("DELAY", "0")))
    arr = embed(path)
    if MODE == "nan" and is_bad:
        arr[0] = np.nan
    if MODE == "junk" and is_bad:
        arr = np.zeros((3, 4), np.float32)
    write(case, arr)
if MODE == "junk":
    (out / "extra.txt").write_text("not an output")
    victim = out / "zz_symlink.h5"
    with __import__("contextlib").suppress(OSError):
        os.symlink("/etc/passwd", victim)
sys.exit(0)
