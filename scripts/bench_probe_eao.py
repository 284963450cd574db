"""Benchmark `ctfm probe eao` training against the reference approach, in one run.

Data: ``--cases`` cases of ``[D, 5, 5, 5]`` tokens (``--grid`` sets the side; ``--variable``: each axis drawn
from side-1..side+1, so cases of one batch differ in token count) with a
finding planted in a few tokens of each positive case, written as one reference ``.h5`` per case.

Reference approach (the public reference trainer's design and defaults: ``run_EAO.sh``), written here from the
benchmark facts: a ``Dataset`` that opens each case's ``.h5`` file on every access, a ``DataLoader`` (drop_last)
over a ``WeightedRandomSampler`` of inverse-frequency sample weights min-max scaled to [0.1, 1], one post-norm
attention-pooling head per learning rate (xavier-initialised learnable queries, ``nn.MultiheadAttention`` over
layer-normed keys/values, a GELU feed-forward block 1x, a final LayerNorm and an xavier-initialised classifier
over the concatenated queries), all called in a Python loop on each batch with their cross-entropies summed,
one AdamW (a param group per lr) without weight decay at constant lr, batch 8, val balanced accuracy (the
reference's definition) of every head every epoch, the best over heads and epochs reported. ctfm: the same files imported into a store,
the packed token cache read batch by batch, every learning rate trained as one stacked module (``fit_eao``) with
the same rules (``configs/benchmark.yaml``, section ``eao``), same batch size, epochs and seed. Each side runs in
its own child process so its peak memory (VmHWM) is its own; the one-off import + pack of the store cache
runs in a third one (reported apart). On a GPU (``--device cuda --ref-device cuda``: both sides there) ctfm
replays its steps as CUDA graphs, as ``ctfm probe eao`` does; ``--eager`` times it without them.

Usage: ``python scripts/bench_probe_eao.py [--epochs 20] [--variable] [--grid 5] [--batch-size 8] [--threads 2]
[--seed 42] [--device cuda --ref-device cuda [--eager]]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchlib import peak_rss_mib

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


def _warm_up(device: str) -> None:
    """Import what the first optimiser and metric call import lazily and start the device's context and
    matrix library (seconds of one-off start-up), so neither side's training time includes them."""
    import sklearn.metrics  # noqa: F401
    import torch

    from ctfm.core.device import resolve_device

    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    x = torch.ones(2, 2, device=resolve_device(device))
    (x @ x).sum().item()


# ---------------------------------------------------------------------------------------------- reference


def _reference(args: dict, queue: mp.Queue) -> None:
    import h5py
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset, RandomSampler, WeightedRandomSampler

    from ctfm.core.metrics import reference_metrics

    torch.set_num_threads(args["threads"])
    _warm_up(args["ref_device"])
    dev = torch.device(args["ref_device"])

    def on(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return x.to(dev), None if mask is None else mask.to(dev)

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
                arr = torch.tensor(fh["y_hat"][:]).float()
            return arr.flatten(1), int(y[j])  # [D, tokens]

    def collate(items: list) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Stack [tokens, B, D]; cases of different grids are zero-padded with a key-padding mask."""
        t = max(x.shape[1] for x, _ in items)
        out = torch.zeros(t, len(items), items[0][0].shape[0])
        mask = torch.ones(len(items), t, dtype=torch.bool)
        for i, (x, _) in enumerate(items):
            out[: x.shape[1], i], mask[i, : x.shape[1]] = x.T, False
        return out, (mask if mask.any() else None), torch.tensor([lab for _, lab in items])

    class Block(nn.Module):
        def __init__(self, d: int, heads: int, ffn_mult: float) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(d, heads)
            self.norm_attn, self.norm_kv, self.norm_ffn = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
            hidden = round(ffn_mult * d)
            self.ffn = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, d))

        def forward(self, q: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            kv = self.norm_kv(x)
            q = self.norm_attn(q + self.mha(q, kv, kv, key_padding_mask=mask)[0])
            return self.norm_ffn(q + self.ffn(q))

    class AttnPool(nn.Module):
        def __init__(
            self, d: int, queries: int = 2, heads: int = 4, layers: int = 2, ffn_mult: float = 1
        ) -> None:
            super().__init__()
            self.queries = nn.Parameter(torch.empty(queries, d))
            nn.init.xavier_uniform_(self.queries)
            self.blocks = nn.ModuleList([Block(d, heads, ffn_mult) for _ in range(layers)])
            self.norm, self.fc = nn.LayerNorm(d), nn.Linear(queries * d, 2)
            nn.init.xavier_uniform_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            q = self.queries.unsqueeze(1).expand(-1, x.shape[1], -1)  # [Q, B, D]
            for b in self.blocks:
                q = b(q, x, mask)
            return self.fc(self.norm(q).permute(1, 0, 2).flatten(1))

    start, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(args["seed"])
    # inverse class frequency per case, min-max scaled to [0.1, 1] (float32, as the reference computes them);
    # equal weights: uniform draws with replacement
    weights = torch.as_tensor(1.0 / np.bincount(y[train])[y[train]], dtype=torch.float)
    if torch.isclose(weights.max(), weights.min()):
        sampler = RandomSampler(range(len(train)), replacement=True, num_samples=len(train))
    else:
        weights = 0.1 + 0.9 * (weights - weights.min()) / (weights.max() - weights.min())
        sampler = WeightedRandomSampler(weights, len(train), replacement=True)
    loader = DataLoader(
        H5Tokens(train),
        batch_size=args["batch_size"],
        sampler=sampler,
        collate_fn=collate,
        drop_last=True,
        num_workers=args["ref_workers"],
    )
    val_loader = DataLoader(
        H5Tokens(val), batch_size=args["batch_size"], collate_fn=collate, num_workers=args["ref_workers"]
    )
    heads = nn.ModuleList(AttnPool(args["dim"], ffn_mult=args["ffn_mult"]) for _ in args["lrs"]).to(dev)
    opt = torch.optim.AdamW(
        [{"params": h.parameters(), "lr": lr} for h, lr in zip(heads, args["lrs"], strict=True)],
        weight_decay=args["weight_decay"],
    )
    best = 0.0
    for _ in range(args["epochs"]):
        heads.train()
        for x, mask, lab in loader:
            x, mask, lab = *on(x, mask), lab.to(dev)
            loss = torch.stack([nn.functional.cross_entropy(h(x, mask), lab) for h in heads]).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        heads.eval()
        with torch.no_grad():
            logits = (
                torch.stack([torch.cat([h(*on(x, m)) for x, m, _ in val_loader]) for h in heads])
                .cpu()
                .numpy()
            )
        probs = torch.softmax(torch.as_tensor(logits), dim=-1).numpy()  # what torchmetrics does with logits
        bacc = reference_metrics(np.broadcast_to(y[val], probs.shape[:2]), probs, 2)["balanced_acc"]
        best = max(best, float(np.max(bacc)))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = peak_rss_mib()
    queue.put({"seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak, "best_val_bacc": best})


# ---------------------------------------------------------------------------------------------- ctfm


def _ctfm(args: dict, queue: mp.Queue) -> None:
    import torch

    from ctfm.core.device import resolve_device
    from ctfm.probe.eao import (
        EAOData,
        TokenReader,
        available_bytes,
        cuda_graphed,
        fit_eao,
        plan_memory,
    )
    from ctfm.probe.eao_grid import eao_head_specs
    from ctfm.probe.training import TrainConfig
    from ctfm.store import Store

    torch.set_num_threads(args["threads"])
    _warm_up(args["device"])
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
        patience=10**6,
        device=args["device"],
        seed=args["seed"],
    )
    specs = eao_head_specs(["attn-pool"], ffn_mult=args["ffn_mult"])
    device = resolve_device(args["device"])
    graphed = cuda_graphed(device, config, not args["eager"])
    plan = plan_memory(
        specs, len(args["lrs"]), reader, args["batch_size"], 2, available_bytes(device), graphed=graphed
    )
    start, cpu = time.perf_counter(), time.process_time()
    result = fit_eao(
        data, specs, args["lrs"], config, weight_decay=args["weight_decay"], cuda_graphs=not args["eager"]
    )
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = peak_rss_mib()
    queue.put(
        {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "peak_mib": peak,
            "best_val_bacc": float(result.history["val_balanced_acc"].max()),
            "cache_mib": packed.tokens.nbytes / 2**20,
            "plan": plan.describe(),
            "cuda_graphs": result.extra["cuda_graphs"],
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
    while True:  # a child that dies without an answer (an exception, the OOM killer) must not hang the bench
        try:
            out = queue.get(timeout=5)
            break
        except Exception:  # queue.Empty
            if not proc.is_alive():
                sys.exit(f"{target.__name__} ended with exit code {proc.exitcode} and no result")
    proc.join()
    return out


def main() -> None:
    from ctfm.core.benchmark import load_benchmark

    eao = load_benchmark().section("eao")  # the rules both sides follow
    assert eao["schedule"] == "none" and eao["sampling"] == "weighted-scaled", (
        "the reference side assumes these"
    )
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=300)
    p.add_argument("--dim", type=int, default=320)
    p.add_argument("--epochs", type=int, default=20, help="reduced from the reference 1000 for both")
    p.add_argument("--batch-size", type=int, default=eao["batch_size"])
    p.add_argument("--lrs", type=float, nargs="+", default=eao["lrs"])
    p.add_argument("--ffn-mult", type=float, default=eao["ffn_mult"])
    p.add_argument("--ref-workers", type=int, default=0, help="reference DataLoader workers")
    p.add_argument("--grid", type=int, default=5, help="token grid side (5: [D, 5, 5, 5])")
    p.add_argument("--variable", action="store_true", help="grid sides drawn from side-1..side+1 per axis")
    p.add_argument("--amp", type=float, default=6.0, help="strength of the planted finding")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="ctfm side: cpu, cuda or auto")
    p.add_argument("--ref-device", default="cpu", help="reference side: cpu or cuda")
    p.add_argument("--eager", action="store_true", help="ctfm side on a GPU: no CUDA graphs")
    p.add_argument("--seed", type=int, default=eao["seed"], help="training seed of both sides")
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
            "ffn_mult": a.ffn_mult,
            "ref_workers": a.ref_workers,
            "weight_decay": float(eao["weight_decays"][0]),
            "seed": a.seed,
            "threads": a.threads,
            "device": a.device,
            "ref_device": a.ref_device,
            "eager": a.eager,
            "dtype": a.dtype,
            "store": str(Path(tmp) / "store"),
            "h5_dir": str(h5_dir),
        }
        ours = {**_run(_pack, args), **_run(_ctfm, args)}
        ref = None if a.skip_reference else _run(_reference, args)
    g = a.grid
    grid = f"variable {g - 1}..{g + 1} per axis" if a.variable else f"{g}x{g}x{g}"
    print(
        f"EAO bench: {a.cases} cases [{a.dim}, {grid}], attn-pool (ffn {a.ffn_mult:g}x) x {len(a.lrs)} lrs, "
        f"{a.epochs} epochs, batch {a.batch_size}, {a.threads} threads, seed {a.seed}, packed {a.dtype}, "
        f"reference workers {a.ref_workers}; devices: ctfm {a.device}"
        f"{' (CUDA graphs)' if ours['cuda_graphs'] else ''}, reference {a.ref_device}"
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
