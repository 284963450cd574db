"""Test extractor for the docker tests: a tiny deterministic embedding, plus misbehaviours chosen by MODE.

It follows the reference contract: fixed paths (/workspace/inputs, /workspace/outputs), MASKS_DIR when set,
every <case>.nii.gz of the inputs. MODE (baked into each test image) picks on BAD_CASE (default: none):
good, hang, crash, nan, junk (wrong shape, a stray file, a symlink), net (tries the network), hog (touches
HOG_MIB MiB), slow (SLOW seconds per case), scratch (writes a cache in its app folder, /tmp and $HOME, and
says whether an earlier container's cache was there; with SCRATCH_APP=0 not in its app folder), unlinked
(writes FILL_MIB MiB into an unlinked file under FILL_DIR and prints how much the kernel let it write), fill
(writes FILL_MIB MiB into FILL_DIR/fill.bin and dies if it cannot), stray (a log file beside its outputs),
deep (a DEPTH-deep folder chain in the outputs), chunks (y_hat in CHUNKS one-value chunks), envdirs (reads
INPUT_DIR and OUTPUT_DIR, which only ctfm once set), fuzz (each case's valid output mutated by fuzz.mutate,
seeded by the case). DELAY seconds are spent on every case in any mode, so outputs arrive apart.
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
inp = Path("/workspace/inputs")
out = Path("/workspace/outputs")
if MODE == "envdirs":
    inp, out = Path(os.environ["INPUT_DIR"]), Path(os.environ["OUTPUT_DIR"])
masks = os.environ.get("MASKS_DIR", "")
cases = sorted(p for p in inp.glob("*.nii.gz"))
bad = os.environ.get("BAD_CASE", "")


def embed(path: Path) -> np.ndarray:
    vol = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    if masks:
        m = np.asarray(nib.load(str(Path(masks) / path.name)).dataobj) > 0
        vol = vol * m
    stats = np.array(
        [vol.mean(), vol.std(), vol.min(), vol.max(), np.median(vol), (vol > 0).mean(), vol.sum(), 1.0],
        np.float32,
    )
    if TASK == "lp":
        return stats
    return np.broadcast_to(stats[:, None, None, None], (8, 2, 2, 2)).copy()


def write(case: str, arr: np.ndarray, **kwargs) -> Path:
    path = out / f"{case}.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("y_hat", data=arr, **kwargs)
    return path


def fill_unlinked(folder: Path, mib: int) -> None:
    """Write into a file nobody can see any more (no folder walk finds it); report what the kernel allowed."""
    path = folder / ".hidden"
    written = 0
    with open(path, "wb") as fh:
        os.unlink(path)
        try:
            for _ in range(mib):
                fh.write(b"\1" * (1 << 20))
                fh.flush()
                written += 1
            os.fsync(fh.fileno())
            print(f"unlinked: wrote {written} MiB", flush=True)
        except OSError as exc:
            print(f"unlinked: wrote {written} MiB, then {exc.strerror}", flush=True)


def scratch() -> None:
    """Caches as real models write them: beside the code, in /tmp and under $HOME. Each container starts from
    the image, as under `docker run --rm`: an earlier container's cache found there is reported."""
    targets = [Path("/tmp/ctfm-cache"), Path(os.environ.get("HOME", "/root")) / ".cache" / "model"]
    if os.environ.get("SCRATCH_APP", "1") == "1":
        targets.insert(0, Path.cwd() / "cache")
    earlier = [str(f) for f in targets if (f / "kernel.so").exists()]
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "kernel.so").write_bytes(b"\0" * 4096)
    found = f"found an earlier cache in {', '.join(earlier)}" if earlier else "fresh"
    print(f"scratch: wrote {', '.join(map(str, targets))}; {found}", flush=True)


if MODE == "net":
    for target in (("1.1.1.1", 53), ("example.com", 80)):
        try:
            socket.create_connection(target, timeout=2).close()
            print(f"NETWORK REACHABLE {target}", flush=True)
        except OSError as exc:
            print(f"network blocked {target}: {exc}", flush=True)
if MODE == "scratch":
    scratch()
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
        with open(Path(os.environ.get("FILL_DIR", str(out))) / "fill.bin", "wb") as fh:
            for _ in range(int(os.environ.get("FILL_MIB", "200"))):
                fh.write(b"\1" * (1 << 20))
    if MODE == "unlinked" and is_bad:
        fill_unlinked(Path(os.environ.get("FILL_DIR", str(out))), int(os.environ.get("FILL_MIB", "200")))
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
    if MODE == "chunks" and is_bad:
        write(case, np.zeros(int(os.environ.get("CHUNKS", "65536")), np.float32), chunks=(1,))
        continue
    written = write(case, arr)
    if MODE == "fuzz":
        sys.path.insert(0, "/app")
        from fuzz import mutate

        mutate(written, int(case.rsplit("_", 1)[-1]))
    if MODE == "deep" and is_bad:
        deep = out / "deep"
        for _ in range(int(os.environ.get("DEPTH", "1500"))):
            deep.mkdir()
            os.chdir(deep)  # relative steps: the full path soon exceeds PATH_MAX
            deep = Path("d")
if MODE == "junk":
    (out / "extra.txt").write_text("not an output")
    victim = out / "zz_symlink.h5"
    with __import__("contextlib").suppress(OSError):
        os.symlink("/etc/passwd", victim)
if MODE == "stray":
    (out / "run.log").write_text("a log the container keeps beside its outputs\n")
sys.exit(0)
