"""Benchmark `ctfm probe eao` training against the reference approach, in one run.

Data: ``--cases`` cases of ``[D, 5, 5, 5]`` tokens (``--grid`` sets the side; ``--variable``: each axis drawn
from side-1..side+1, so cases of one batch differ in token count) with a
finding planted in a few tokens of each positive case, written as one reference ``.h5`` per case.

Reference approach: a ``Dataset`` that opens each case's ``.h5`` file on every access, a ``DataLoader``, and one
attention-pooling head (explicit keys/values through ``nn.MultiheadAttention``) per learning rate, trained in a
Python loop, evaluated on val every epoch. ctfm: the same files imported into a store, the packed token cache
read batch by batch, every learning rate trained on the same batch in one pass (``fit_eao``). Both use the same
rules (AdamW, cosine schedule with warm-up, inverse-frequency sampling with replacement, same batch size,
epochs and seed); each runs in its own child process so its peak memory (ru_maxrss) is its own, and the
one-off import + pack of the store cache runs in a third one (reported apart).

Usage: ``python scripts/bench_probe_eao.py [--epochs 20] [--variable] [--grid 5] [--threads 2] [--device cuda]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_cases(
    out: Path, n: int, dim: int, variable: bool, seed: int, args_amp: float = 6.0, side: int = 5
) -> tuple[list[str], np.ndarray]:
    """Write ``n`` reference ``<case>.h5`` files; positives carry a finding (``args_amp`` along one direction)
    in 3 tokens only."""
    from ctfm.store import write_y_hat

    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    y = rng.integers(0, 2, n)
    names = []
    for i in range(n):
        grid = tuple(rng.integers(side - 1, side + 2, 3)) if variable else (side,) * 3
        x = rng.normal(size=(dim, *grid)).astype(np.float32)
        if y[i]:
            flat = x.reshape(dim, -1)
            flat[:, rng.choice(flat.shape[1], 3, replace=False)] += args_amp * direction[:, None]
        name = f"case_{i:04d}"
        write_y_hat(out / f"{name}.h5", x)
        names.append(name)
    return names, y


def _warm_imports() -> None:
    """Import what the first optimiser and metric call import lazily (seconds of one-off start-up), so
    neither side's training time includes it."""
    import sklearn.metrics  # noqa: F401
    import torch

    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])


# ---------------------------------------------------------------------------------------------- reference


def _reference(args: dict, queue: mp.Queue) -> None:
    import h5py
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

    from ctfm.probe.training import batched_metrics, build_schedule, class_weights

    torch.set_num_threads(args["threads"])
    _warm_imports()
    files, y = [Path(f) for f in args["files"]], np.asarray(args["y"])
    train, val = np.asarray(args["train"]), np.asarray(args["val"])

    class H5Tokens(Dataset):
        def __init__(self, idx: np.ndarray) -> None:
            self.idx = idx

        def __len__(self) -> int:
            return len(self.idx)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            j = self.idx[i]
            with h5py.File(files[j], "r") as fh:
                arr = np.asarray(fh["y_hat"], dtype=np.float32)
            return torch.from_numpy(arr.reshape(arr.shape[0], -1).T.copy()), int(y[j])

    def collate(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = max(x.shape[0] for x, _ in items)
        out = torch.zeros(len(items), t, items[0][0].shape[1])
        mask = torch.ones(len(items), t, dtype=torch.bool)
        for i, (x, _) in enumerate(items):
            out[i, : len(x)], mask[i, : len(x)] = x, False
        return out, mask, torch.tensor([lab for _, lab in items])

    class Block(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.ln_q, self.ln_kv, self.ln_ff = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
            self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, q: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            kv = self.ln_kv(x)
            q = q + self.attn(self.ln_q(q), kv, kv, key_padding_mask=mask, need_weights=False)[0]
            return q + self.ff(self.ln_ff(q))

    class AttnPool(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.queries = nn.Parameter(torch.randn(2, d) * 0.02)
            self.blocks = nn.ModuleList([Block(d), Block(d)])
            self.norm, self.fc = nn.LayerNorm(d), nn.Linear(2 * d, 2)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            q = self.queries.expand(x.shape[0], -1, -1)
            for b in self.blocks:
                q = b(q, x, mask)
            return self.fc(self.norm(q).flatten(1))

    start, cpu = time.perf_counter(), time.process_time()
    weights = class_weights(y[train], 2)[y[train]]
    val_loader = DataLoader(H5Tokens(val), batch_size=args["batch_size"], collate_fn=collate)
    best = 0.0
    for lr in args["lrs"]:
        torch.manual_seed(args["seed"])
        sampler = WeightedRandomSampler(weights, len(train), replacement=True)
        loader = DataLoader(
            H5Tokens(train),
            batch_size=args["batch_size"],
            sampler=sampler,
            collate_fn=collate,
            drop_last=True,
        )
        head = AttnPool(args["dim"])
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=args["weight_decay"])
        sched = build_schedule("cosine", args["epochs"], len(loader), args["warmup"]).lr_factor
        step = 0
        for _ in range(args["epochs"]):
            head.train()
            for x, mask, lab in loader:
                for g in opt.param_groups:
                    g["lr"] = lr * sched[step]
                opt.zero_grad()
                nn.functional.cross_entropy(head(x, mask), lab).backward()
                opt.step()
                step += 1
            head.eval()
            with torch.no_grad():
                logits = torch.cat([head(x, m) for x, m, _ in val_loader]).numpy()
            bacc = batched_metrics(y[val], logits[None], np.zeros(1))["val_balanced_acc"][0]
            best = max(best, float(bacc))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak, "best_val_bacc": best})


# ---------------------------------------------------------------------------------------------- ctfm


def _ctfm(args: dict, queue: mp.Queue) -> None:
    import torch

    from ctfm.probe.eao import EAOData, HeadSpec, TokenReader, fit_eao, plan_memory
    from ctfm.probe.training import TrainConfig
    from ctfm.store import Store

    torch.set_num_threads(args["threads"])
    _warm_imports()
    y = np.asarray(args["y"])
    view = Store(Path(args["store"])).view("bench", "eao", "full")
    packed = view.packed(args["dtype"])  # built by _pack in another process: a cache hit here
    reader = TokenReader.from_packed(packed)
    rows = np.array([packed.index(f"case_{i:04d}") for i in range(len(y))])
    train, val = np.asarray(args["train"]), np.asarray(args["val"])
    data = EAOData(reader, rows[train], y[train], rows[val], y[val], [0, 1])
    config = TrainConfig.from_benchmark(
        "eao",
        epochs=args["epochs"],
        batch_size=args["batch_size"],
        warmup_epochs=args["warmup"],
        seed=args["seed"],
        patience=10**6,
        device=args["device"],
    )
    specs = [HeadSpec("attn-pool")]
    plan = plan_memory(specs, len(args["lrs"]), reader, args["batch_size"], 2)
    start, cpu = time.perf_counter(), time.process_time()
    result = fit_eao(data, specs, args["lrs"], config, weight_decay=args["weight_decay"])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(
        {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "peak_mib": peak,
            "best_val_bacc": float(result.history["val_balanced_acc"].max()),
            "cache_mib": packed.tokens.nbytes / 2**20,
            "plan": plan.describe(),
        }
    )


def _pack(args: dict, queue: mp.Queue) -> None:
    """The one-off import + pack of the store cache, in its own process (its memory is not training's)."""
    from ctfm.store import Store, import_folder

    t0 = time.perf_counter()
    view = Store(Path(args["store"])).view("bench", "eao", "full")
    import_folder(view, Path(args["h5_dir"]))
    view.packed(args["dtype"])
    queue.put({"pack_seconds": time.perf_counter() - t0})


def _run(target, args: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=300)
    p.add_argument("--dim", type=int, default=320)
    p.add_argument("--epochs", type=int, default=20, help="reduced from the reference 1000 for both")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    p.add_argument("--grid", type=int, default=5, help="token grid side (5: [D, 5, 5, 5])")
    p.add_argument("--variable", action="store_true", help="grid sides drawn from side-1..side+1 per axis")
    p.add_argument("--amp", type=float, default=6.0, help="strength of the planted finding")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="ctfm side: cpu, cuda or auto")
    p.add_argument("--skip-reference", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        h5_dir = Path(tmp) / "h5"
        h5_dir.mkdir()
        names, y = make_cases(h5_dir, a.cases, a.dim, a.variable, seed=0, args_amp=a.amp, side=a.grid)
        n_train = round(0.67 * a.cases)
        args = {
            "files": [str(h5_dir / f"{n}.h5") for n in names],
            "y": y.tolist(),
            "train": list(range(n_train)),
            "val": list(range(n_train, a.cases)),
            "dim": a.dim,
            "epochs": a.epochs,
            "batch_size": a.batch_size,
            "lrs": a.lrs,
            "warmup": 5.0 if a.epochs > 10 else 0.0,
            "weight_decay": 1e-4,
            "seed": 42,
            "threads": a.threads,
            "device": a.device,
            "dtype": a.dtype,
            "store": str(Path(tmp) / "store"),
            "h5_dir": str(h5_dir),
        }
        ours = {**_run(_pack, args), **_run(_ctfm, args)}
        ref = None if a.skip_reference else _run(_reference, args)
    g = a.grid
    grid = f"variable {g - 1}..{g + 1} per axis" if a.variable else f"{g}x{g}x{g}"
    print(
        f"EAO bench: {a.cases} cases [{a.dim}, {grid}], attn-pool x {len(a.lrs)} lrs, {a.epochs} epochs, "
        f"batch {a.batch_size}, {a.threads} threads, packed {a.dtype}"
    )
    print(f"ctfm memory plan: {ours['plan']}")
    rows = [("ctfm", ours)] + ([("reference", ref)] if ref else [])
    for name, r in rows:
        print(
            f"{name:10s} wall {r['seconds']:8.2f} s  CPU {r['cpu_seconds']:8.2f} s  peak RSS {r['peak_mib']:7.1f} MiB  "
            f"best val balanced acc {r['best_val_bacc']:.4f}"
        )
    print(f"ctfm one-off import + pack: {ours['pack_seconds']:.2f} s, cache {ours['cache_mib']:.1f} MiB")
    if ref:
        print(
            f"speed-up {ref['seconds'] / ours['seconds']:.1f}x wall (training), "
            f"{ref['cpu_seconds'] / ours['cpu_seconds']:.1f}x CPU time, "
            f"{ref['seconds'] / (ours['seconds'] + ours['pack_seconds']):.1f}x (including the pack); "
            f"accuracy difference {ours['best_val_bacc'] - ref['best_val_bacc']:+.4f}"
        )
    print(json.dumps({"ctfm": ours, "reference": ref}, default=str))


if __name__ == "__main__":
    main()
