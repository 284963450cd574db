"""Benchmark: ctfm's batched linear-probe grid against a reimplementation of the reference trainer's approach.

Both run in this process on the same data: 800 train / 200 val / 200 test embeddings of dimension 1,120 with a
weak planted linear signal, stored as one ``<case>.h5`` per case (dataset ``y_hat``).

* reference approach: a ``Dataset`` that opens one ``.h5`` per case, a ``DataLoader`` with a seeded
  ``WeightedRandomSampler`` (with replacement) re-reading the files every epoch, one ``nn.Linear`` per grid
  point in a ``ModuleDict`` looped over in Python (views raw/std computed once per batch, loss summed over
  heads, one AdamW with a param group per head, PyTorch's per-iteration LinearLR + CosineAnnealingLR), a per-head val
  pass every epoch with the seven reference metrics (scikit-learn here), EMA early stopping, the five
  checkpoint strategies restricted to still-active heads, a ``torch.save`` per improvement. Early-stopped
  heads keep training, as in the reference (they only leave selection). Both start from the same initial
  weights and the same sampler draws, so their results should agree closely.
* ctfm: embeddings imported into the store once (untimed: extraction writes them there), then timed:
  packing the view (first read) and ``fit_linear_grid`` on the packed arrays; the whole ``run_disease``
  (reports, figure, checkpoints) is timed separately.

Peak memory is the peak resident-set-size increase over the phase's starting RSS, sampled every 5 ms by a
thread reading ``/proc/self/status`` (tracemalloc would miss torch's allocations).

    .venv/bin/python scripts/bench_probe_lp.py            # full protocol: 104 heads, 150 epochs
    .venv/bin/python scripts/bench_probe_lp.py --quick    # smoke run (small data, 8 epochs)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.special import expit
from sklearn import metrics as skm
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, WeightedRandomSampler

from ctfm.benchmark import load_benchmark
from ctfm.probe.data import load_disease
from ctfm.probe.linear import build_grid, fit_linear_grid
from ctfm.probe.runner import ProbeOptions, linear_task, run_disease
from ctfm.probe.training import STRATEGIES, TrainConfig
from ctfm.store import Store, import_folder

DISEASE = "fatty_liver"
MODEL = "bench-model"


# ----------------------------------------------------------------------------- measurement


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@contextmanager
def measure(result: dict):
    """Wall time and peak RSS increase of the block (sampled by a thread every 5 ms)."""
    start_rss = _rss_bytes()
    peak = [start_rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        result["seconds"] = time.perf_counter() - t0
        stop.set()
        thread.join()
        peak[0] = max(peak[0], _rss_bytes())
        result["peak_rss_increase_mb"] = (peak[0] - start_rss) / 2**20


# ----------------------------------------------------------------------------- data


def make_data(root: Path, n_train: int, n_val: int, n_test: int, dim: int, signal: float, seed: int):
    """Per-case .h5 files and a reference-style label CSV with a weak planted linear signal."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    score = rng.normal(size=n)
    y = (score + rng.normal(scale=1.0, size=n) > 0.6).astype(np.int64)  # about 30 % positives
    x = rng.normal(size=(n, dim)) * rng.uniform(0.2, 3.0, size=dim) + rng.normal(size=dim)
    x += signal * score[:, None] * direction[None, :]
    cases = [f"case_{i:05d}" for i in range(n)]
    h5_dir = root / "embeddings"
    h5_dir.mkdir(parents=True, exist_ok=True)
    for case, row in zip(cases, x.astype(np.float32), strict=True):
        with h5py.File(h5_dir / f"{case}.h5", "w") as fh:
            fh.create_dataset("y_hat", data=row)
    split = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    labels = root / "labels"
    labels.mkdir(exist_ok=True)
    pd.DataFrame({"case_id": [c + ".nii.gz" for c in cases], "split": split, DISEASE: y}).to_csv(
        labels / f"{DISEASE}.csv", index=False
    )
    return h5_dir, labels


# ----------------------------------------------------------------------------- reference approach


class H5Dataset(Dataset):
    """One .h5 file opened per item, every time it is drawn."""

    def __init__(self, h5_dir: Path, csv: Path, split: str) -> None:
        table = pd.read_csv(csv)
        table = table[table["split"] == split]
        self.paths = [h5_dir / (c.replace(".nii.gz", "") + ".h5") for c in table["case_id"]]
        self.labels = table[DISEASE].to_numpy()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with h5py.File(self.paths[i], "r") as fh:
            x = torch.tensor(fh["y_hat"][:]).float()
        return x, torch.tensor(int(self.labels[i])).long()


class HeadDict(nn.Module):
    def __init__(self, dim: int, grid, mean: torch.Tensor, std: torch.Tensor, seed: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict()
        self.norm_of = {}
        # N(0, 0.01) weights, zero bias; drawn from the same seeded generator as ctfm so that both start
        # from identical heads and the comparison isolates the training computation
        w0 = torch.randn(len(grid), 1, dim, generator=torch.Generator().manual_seed(seed)) * 0.01
        for i, p in enumerate(grid):
            m = nn.Linear(dim, 1)
            with torch.no_grad():
                m.weight.copy_(w0[i])
            nn.init.zeros_(m.bias)
            self.heads[f"h{i}"] = m
            self.norm_of[f"h{i}"] = p.norm
        self.register_buffer("mean", mean.view(1, -1))
        self.register_buffer("std", std.view(1, -1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        views = {"raw": x, "std": (x - self.mean) / self.std}
        return {k: m(views[self.norm_of[k]]).reshape(-1) for k, m in self.heads.items()}


def _reference_metrics(y: np.ndarray, logit: np.ndarray, loss: float) -> dict[str, float]:
    prob = expit(logit)
    pred = (prob > 0.5).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    bacc = skm.balanced_accuracy_score(y, pred)
    auroc = skm.roc_auc_score(y, prob)
    return {
        "acc": skm.accuracy_score(y, pred),
        "f1": skm.f1_score(y, pred, zero_division=0),
        "auroc": auroc,
        "ap": skm.average_precision_score(y, prob),
        "sensitivity": tp / max(tp + fn, 1),
        "specificity": tn / max(tn + fp, 1),
        "val_balanced_acc": bacc,
        "val_auroc": auroc,
        "val_loss": loss,
    }


def run_reference(h5_dir: Path, csv: Path, grid, cfg: TrainConfig, out_dir: Path, workers: int) -> dict:
    torch.manual_seed(cfg.seed)
    ds_tr, ds_va = H5Dataset(h5_dir, csv, "train"), H5Dataset(h5_dir, csv, "val")
    # train statistics for the std view: one streaming pass over the files
    s = sq = None
    n = 0
    for xb, _ in DataLoader(ds_tr, batch_size=256, num_workers=workers):
        xb = xb.double()
        s = xb.sum(0) if s is None else s + xb.sum(0)
        sq = (xb * xb).sum(0) if sq is None else sq + (xb * xb).sum(0)
        n += len(xb)
    mean = s / n
    std = (sq / n - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
    counts = np.bincount(ds_tr.labels, minlength=2)
    weights = torch.as_tensor(len(ds_tr.labels) / (2 * counts[ds_tr.labels]), dtype=torch.float64)
    gen = torch.Generator().manual_seed(cfg.seed)
    sampler = (
        WeightedRandomSampler(weights, len(ds_tr), replacement=True, generator=gen)
        if cfg.sampling == "weighted"
        else RandomSampler(ds_tr, replacement=True, num_samples=len(ds_tr), generator=gen)
    )
    drop_last = len(ds_tr) >= cfg.batch_size
    dl_tr = DataLoader(
        ds_tr,
        batch_size=min(cfg.batch_size, len(ds_tr)),
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
    )
    dl_va = DataLoader(ds_va, batch_size=cfg.batch_size, shuffle=False, num_workers=workers)
    model = HeadDict(ds_tr[0][0].shape[0], grid, mean.float(), std.float(), cfg.seed)
    names = list(model.heads)
    groups = [
        {
            "params": model.heads[k].parameters(),
            "lr": p.lr,
            "weight_decay": p.weight_decay,
            "betas": p.betas,
            "eps": p.eps,
        }
        for k, p in zip(names, grid, strict=True)
    ]
    opt = torch.optim.AdamW(groups)
    total, warm = cfg.epochs * len(dl_tr), round(cfg.warmup_epochs * len(dl_tr))
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-3, end_factor=1.0, total_iters=warm),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total - warm), eta_min=0),
        ],
        milestones=[warm],
    )
    mode, monitor_fn = STRATEGIES[cfg.monitor]
    sign = 1 if mode == "max" else -1
    ema = dict.fromkeys(names)
    best_ema = dict.fromkeys(names, -np.inf)
    bad = dict.fromkeys(names, 0)
    converged: set[str] = set()
    best = {s: (-np.inf, None, None) for s in cfg.strategies}
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        for xb, yb in dl_tr:
            out = model(xb)
            loss = torch.stack(
                [F.binary_cross_entropy_with_logits(o, yb.float()) for o in out.values()]
            ).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scheduler.step()
        model.eval()
        logits = {k: [] for k in names}
        ys = []
        with torch.no_grad():
            for xb, yb in dl_va:
                for k, o in model(xb).items():
                    logits[k].append(o)
                ys.append(yb)
        y = torch.cat(ys)
        met = {}
        for k in names:
            z = torch.cat(logits[k])
            met[k] = _reference_metrics(
                y.numpy(), z.numpy(), F.binary_cross_entropy_with_logits(z, y.float()).item()
            )
        for k in names:
            if k in converged:
                continue
            cur = float(monitor_fn({m: np.asarray(v) for m, v in met[k].items()}))
            ema[k] = cur if ema[k] is None else cfg.ema_decay * ema[k] + (1 - cfg.ema_decay) * cur
            if sign * ema[k] > best_ema[k]:
                best_ema[k], bad[k] = sign * ema[k], 0
            elif epoch >= cfg.min_epoch:
                bad[k] += 1
            if epoch >= cfg.min_epoch and bad[k] >= cfg.patience:
                converged.add(k)
        active = [k for k in names if k not in converged]
        if epoch >= cfg.min_epoch and active:
            for sname in cfg.strategies:
                smode, sfn = STRATEGIES[sname]
                ssign = 1 if smode == "max" else -1
                scores = {
                    k: ssign * float(sfn({m: np.asarray(v) for m, v in met[k].items()})) for k in active
                }
                head = max(active, key=lambda k, scores=scores: scores[k])
                if scores[head] > best[sname][0]:
                    best[sname] = (scores[head], head, epoch, met[head]["val_balanced_acc"])
                    torch.save(model.heads[head].state_dict(), out_dir / f"best_{sname}.pth")
        if len(converged) == len(names):
            break
    sel = best["val_balanced_acc"]
    return {
        "epochs_run": epoch,
        "best_bacc": float(sel[3]),
        "best_head": grid[int(sel[1][1:])],
        "best_epoch": sel[2],
    }


# ----------------------------------------------------------------------------- ctfm


def run_ctfm(store: Path, labels: Path, grid, cfg: TrainConfig):
    """Load the packed view and train the grid (the timed part of ctfm)."""
    result: dict = {}
    with measure(result):
        data = load_disease(store, MODEL, labels, DISEASE)
        split = data.split("split")
        x_tr, y_tr = data.arrays(split.train)
        x_va, y_va = data.arrays(split.val)
        fit = fit_linear_grid(x_tr, y_tr, x_va, y_va, grid, cfg)
    sel = fit.selections["val_balanced_acc"]
    result.update(
        epochs_run=fit.epochs_run,
        best_bacc=sel.metrics["balanced_acc"],
        best_head=fit.heads[sel.head]["name"],
        best_epoch=sel.epoch,
    )
    return result, fit


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 200/50/50 cases, D=256, 8 epochs")
    ap.add_argument("--epochs", type=int, default=None, help="epochs for both (default: protocol, 150)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the reference approach")
    ap.add_argument("--device", default="cpu", help="ctfm device: cpu, cuda or auto")
    ap.add_argument("--signal", type=float, default=0.35, help="strength of the planted signal")
    ap.add_argument("--skip-reference", action="store_true", help="time ctfm only")
    args = ap.parse_args()

    sizes = (200, 50, 50, 256) if args.quick else (800, 200, 200, 1120)
    epochs = args.epochs or (8 if args.quick else None)
    lp = load_benchmark().section("linear_probe")
    cfg = TrainConfig.from_benchmark(epochs=epochs, device=args.device)
    grid = build_grid(lp["lrs"], lp["weight_decays"], lp["norms"])
    torch.set_num_threads(os.cpu_count() or 1)
    print(
        f"data: {sizes[0]} train / {sizes[1]} val / {sizes[2]} test, D={sizes[3]}; "
        f"grid {len(grid)} heads, {cfg.epochs} epochs max, batch {cfg.batch_size}, torch threads "
        f"{torch.get_num_threads()}"
    )

    with tempfile.TemporaryDirectory(prefix="bench_probe_lp_") as tmp:
        root = Path(tmp)
        h5_dir, labels = make_data(root, *sizes, signal=args.signal, seed=0)
        view = Store(root / "store").view(MODEL, "lp", load_benchmark().view_of(DISEASE))
        import_folder(view, h5_dir)

        ctfm_first: dict = {}
        with measure(ctfm_first):
            load_disease(root / "store", MODEL, labels, DISEASE)
        ctfm, fit = run_ctfm(root / "store", labels, grid, cfg)
        full: dict = {}
        options = ProbeOptions.defaults(
            store=root / "store", model=MODEL, labels=labels, out=root / "out", diseases=[DISEASE], train=cfg
        )
        with measure(full):
            run_disease(options, linear_task(options), DISEASE, log=lambda _m: None)

        print(
            f"ctfm   packing the view (first read of the store): {ctfm_first['seconds']:.2f} s, "
            f"peak RSS +{ctfm_first['peak_rss_increase_mb']:.0f} MiB"
        )
        print(
            f"ctfm   load + train: {ctfm['seconds']:.2f} s, peak RSS +{ctfm['peak_rss_increase_mb']:.0f} MiB, "
            f"{ctfm['epochs_run']} epochs, best val balanced acc {ctfm['best_bacc']:.4f} "
            f"({ctfm['best_head']} ep{ctfm['best_epoch']}), device {fit.extra['device']}"
        )
        print(
            f"ctfm   whole disease incl. reports, figure, 5 checkpoints: {full['seconds']:.2f} s, "
            f"peak RSS +{full['peak_rss_increase_mb']:.0f} MiB"
        )
        if args.skip_reference:
            return
        ref: dict = {}
        ref_out = root / "reference"
        ref_out.mkdir()
        with measure(ref):
            ref.update(run_reference(h5_dir, labels / f"{DISEASE}.csv", grid, cfg, ref_out, args.workers))
        p = ref["best_head"]
        print(
            f"ref    load + train: {ref['seconds']:.2f} s, peak RSS +{ref['peak_rss_increase_mb']:.0f} MiB, "
            f"{ref['epochs_run']} epochs, best val balanced acc {ref['best_bacc']:.4f} "
            f"(lr {p.lr:g} wd {p.weight_decay:g} {p.norm} ep{ref['best_epoch']})"
        )
        again, _ = run_ctfm(root / "store", labels, grid, cfg)  # the machine's load may have changed
        print(
            f"ctfm   load + train again after the reference: {again['seconds']:.2f} s, "
            f"peak RSS +{again['peak_rss_increase_mb']:.0f} MiB"
        )
        slowest = max(ctfm["seconds"], again["seconds"])
        print(
            f"speed-up (ref / slower of the two ctfm load + train): {ref['seconds'] / slowest:.1f}x; "
            f"incl. reports, figure and checkpoints: {ref['seconds'] / full['seconds']:.1f}x; "
            f"|delta best val bacc| = {abs(ref['best_bacc'] - ctfm['best_bacc']):.4f}"
        )


if __name__ == "__main__":
    main()
