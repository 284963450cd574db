"""``ctfm probe``: train probes on stored embeddings (``lp``: linear probing; ``eao`` adds task 2).

List options take comma-separated values or repeat: ``--lrs 1e-3,1e-2`` or ``--seeds 0 --seeds 1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

probe_app = typer.Typer(help="Train probes on stored embeddings.", no_args_is_help=True)
console = Console(stderr=True)

PROBES = ("grid", "logreg")


def register(app: typer.Typer) -> None:
    app.add_typer(probe_app, name="probe")


def split_list(values: list[str] | None) -> list[str]:
    """``["1e-3,1e-2", "0.1"]`` -> ``["1e-3", "1e-2", "0.1"]`` (commas or spaces separate values)."""
    out: list[str] = []
    for v in values or []:
        out.extend(t for t in v.replace(",", " ").split() if t)
    return out


def _numbers(values: list[str] | None, kind: type, option: str) -> list[Any] | None:
    from ctfm.errors import ConfigError

    items = split_list(values)
    if not items:
        return None
    try:
        return [kind(v) for v in items]
    except ValueError:
        raise ConfigError(f"{option}: expected {kind.__name__} values, got {' '.join(items)}") from None


def _betas(values: list[str] | None) -> list[tuple[float, float]] | None:
    from ctfm.errors import ConfigError

    pairs = []
    for v in split_list(values):
        parts = v.split(":")
        if len(parts) != 2:
            raise ConfigError(f"--betas expects beta1:beta2 pairs such as 0.9:0.999, got {v!r}")
        pairs.append((float(parts[0]), float(parts[1])))
    return pairs or None


def resolve_diseases(diseases: list[str] | None, all_: bool) -> list[str]:
    """``--disease`` names (checked against the benchmark) or every AMOS disease with ``--all``."""
    from ctfm.benchmark import load_benchmark
    from ctfm.errors import ConfigError

    bench = load_benchmark()
    names = split_list(diseases)
    if all_ and names:
        raise ConfigError("give --disease NAME ... or --all, not both")
    if all_:
        return list(bench.diseases)
    if not names:
        raise ConfigError("give --disease NAME (repeatable) or --all")
    return [bench.check_disease(d) for d in names]


def print_outcomes(outcomes: list[Any], title: str) -> int:
    """A table of per-disease results; returns the number of failed diseases."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("disease", no_wrap=True)
    for col in ("status", "runs", "train/val", "missing", "val bacc", "val auroc", "seconds"):
        table.add_column(col)
    failed = 0
    for o in outcomes:
        if o.status == "failed":
            failed += 1
            table.add_row(o.disease, "[red]failed[/]", "", "", "", "", "", o.error[:60])
            continue
        s = o.summary or {}
        runs = s.get("runs", [])
        agg = s.get("aggregate", {})

        def cell(strategy: str, metric: str, agg: dict = agg) -> str:
            m = agg.get(strategy, {}).get(metric)
            if not m or m.get("n", 0) == 0:
                return ""
            return f"{m['mean']:.3f}" + (f" ± {m['std']:.3f}" if m["n"] > 1 else "")

        sizes = f"{runs[0]['n_train']}/{runs[0]['n_val']}" if runs else ""
        table.add_row(
            o.disease,
            "[green]done[/]" if o.status == "done" else "[dim]skipped (DONE)[/]",
            str(len(runs)),
            sizes,
            str(s.get("missing", {}).get("count", "")),
            cell("val_balanced_acc", "balanced_acc"),
            cell("val_auroc", "auroc"),
            f"{o.seconds:.1f}" if o.status == "done" else "",
        )
    Console().print(table)
    return failed


def run_with_progress(options: Any, task: Any, title: str) -> list[Any]:
    """Run every disease with a rich progress bar over runs (messages print above it)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ctfm.probe.runner import run_probe

    total = len(options.diseases) * len(options.run_specs())
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        job = bar.add_task(title, total=total)
        return run_probe(
            options,
            task,
            log=lambda m: bar.console.print(m, highlight=False),
            on_run=lambda disease, tag: bar.update(job, advance=1, description=f"{title} {disease} {tag}"),
        )


@probe_app.command("lp")
def lp(
    store: Path = typer.Option(..., "--store", help="Embedding store root."),
    model: str = typer.Option(..., "--model", help="Model name in the store."),
    labels: Path = typer.Option(..., "--labels", help="Folder of <disease>.csv label files."),
    out: Path = typer.Option(..., "--out", help="Output folder (written into, never deleted)."),
    disease: list[str] = typer.Option(
        None, "--disease", help="Disease(s) to probe (repeat or comma-separate)."
    ),
    all_: bool = typer.Option(False, "--all", help="Every AMOS disease of the benchmark."),
    probe: str = typer.Option(
        "grid", "--probe", help="grid (batched linear heads) or logreg (scikit-learn)."
    ),
    optimizer: str = typer.Option(None, "--optimizer", help="adamw or sgd (default: config)."),
    schedule: str = typer.Option(None, "--schedule", help="none, cosine (with warm-up) or onecycle."),
    warmup_epochs: float = typer.Option(None, "--warmup-epochs", help="Linear warm-up length for cosine."),
    sampling: str = typer.Option(
        None, "--sampling", help="weighted (with replacement), loss-weight or none."
    ),
    epochs: int = typer.Option(None, "--epochs", help="Maximum epochs (default 150)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Batch size (default 128)."),
    lrs: list[str] = typer.Option(None, "--lrs", help="Learning rates, e.g. 1e-4,1e-3."),
    wds: list[str] = typer.Option(None, "--wds", help="Weight decays."),
    norms: list[str] = typer.Option(None, "--norms", help="Input norms: raw, l2, std, ln."),
    betas: list[str] = typer.Option(None, "--betas", help="AdamW beta pairs b1:b2 (grid axis)."),
    eps: list[str] = typer.Option(None, "--eps", help="AdamW eps values (grid axis)."),
    cs: list[str] = typer.Option(None, "--cs", help="C values swept by --probe logreg."),
    patience: int = typer.Option(None, "--patience", help="Early-stopping patience in epochs."),
    min_epoch: int = typer.Option(
        None, "--min-epoch", help="First epoch counted for patience and selection."
    ),
    ema: float = typer.Option(None, "--ema", help="EMA decay of the monitored metric (0 = raw)."),
    monitor: str = typer.Option(None, "--monitor", help="Early-stopping metric (a strategy name)."),
    split_column: str = typer.Option("split", "--split-column", help="Column with train/val (e.g. fold2)."),
    folds: int = typer.Option(
        0, "--folds", help="k-fold mode: run fold0..fold<k-1>, each fold's val is its val."
    ),
    seeds: list[str] = typer.Option(None, "--seeds", help="Repeat with these seeds (mean/std in summary)."),
    shots: int = typer.Option(0, "--shots", help="Few-shot: K train cases per class."),
    tries: int = typer.Option(1, "--tries", help="Few-shot draws per seed."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    threads: int = typer.Option(1, "--threads", help="CPU threads while training (0: torch default)."),
    wandb: bool = typer.Option(
        False, "--wandb", help="Log to Weights & Biases (offline without an API key)."
    ),
    force: bool = typer.Option(False, "--force", help="Retrain diseases that are already DONE."),
) -> None:
    """Linear probing (task 1): the reference grid of linear heads, trained as one batched computation."""
    from ctfm.errors import ConfigError
    from ctfm.probe.runner import ProbeOptions, linear_task
    from ctfm.probe.training import TrainConfig

    if probe not in PROBES:
        raise ConfigError(f"--probe {probe!r} is not one of {', '.join(PROBES)}")
    if shots < 0 or tries < 1 or folds < 0:
        raise ConfigError("--shots must be >= 0, --tries >= 1 and --folds >= 0")
    train = TrainConfig.from_benchmark(
        "linear_probe",
        optimizer=optimizer,
        schedule=schedule,
        warmup_epochs=warmup_epochs,
        sampling=sampling,
        epochs=epochs,
        batch_size=batch_size,
        patience=patience,
        min_epoch=min_epoch,
        ema_decay=ema,
        monitor=monitor,
        device=device,
        threads=threads,
    )
    options = ProbeOptions.defaults(
        store=store,
        model=model,
        labels=labels,
        out=out,
        diseases=resolve_diseases(disease, all_),
        train=train,
        probe=probe,
        lrs=_numbers(lrs, float, "--lrs"),
        weight_decays=_numbers(wds, float, "--wds"),
        norms=split_list(norms) or None,
        betas=_betas(betas),
        eps=_numbers(eps, float, "--eps"),
        logreg_cs=_numbers(cs, float, "--cs"),
        split_column=split_column,
        folds=folds,
        seeds=_numbers(seeds, int, "--seeds"),
        shots=shots,
        tries=tries,
        force=force,
        wandb=wandb,
    )
    outcomes = run_with_progress(options, linear_task(options), "probe lp")
    failed = print_outcomes(outcomes, f"ctfm probe lp — {options.model} -> {options.out}")
    if failed:
        console.print(f"[red]{failed} disease(s) failed[/]")
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- task 2 (added by the EAO helper)


@probe_app.command("eao")
def eao(
    store: Path = typer.Option(..., "--store", help="Embedding store root."),
    model: str = typer.Option(..., "--model", help="Model name in the store."),
    labels: Path = typer.Option(..., "--labels", help="Folder of <disease>.csv label files."),
    out: Path = typer.Option(..., "--out", help="Output folder (written into, never deleted)."),
    disease: list[str] = typer.Option(
        None, "--disease", help="Disease(s) to probe (repeat or comma-separate)."
    ),
    all_: bool = typer.Option(False, "--all", help="Every AMOS disease of the benchmark."),
    head: list[str] = typer.Option(
        None, "--head", help="Head(s): attn-pool, mean-linear, abmil, mlp (default: config, attn-pool)."
    ),
    num_queries: int = typer.Option(None, "--num-queries", help="attn-pool learnable queries (default 2)."),
    num_heads: int = typer.Option(None, "--num-heads", help="attn-pool attention heads (default 4)."),
    num_layers: int = typer.Option(
        None, "--num-layers", help="attn-pool cross-attention layers (default 2)."
    ),
    ffn_mult: float = typer.Option(None, "--ffn-mult", help="attn-pool feed-forward width multiplier (4)."),
    dropout: float = typer.Option(None, "--dropout", help="Dropout of attn-pool, abmil and mlp (0)."),
    hidden: int = typer.Option(None, "--hidden", help="Hidden width of abmil (128) and mlp (256)."),
    lrs: list[str] = typer.Option(None, "--lrs", help="Learning rates (default: config eao.lrs)."),
    weight_decay: float = typer.Option(None, "--weight-decay", help="Weight decay (default: config)."),
    optimizer: str = typer.Option(None, "--optimizer", help="adamw or sgd."),
    schedule: str = typer.Option(None, "--schedule", help="none, cosine (with warm-up) or onecycle."),
    warmup_epochs: float = typer.Option(None, "--warmup-epochs", help="Linear warm-up length for cosine."),
    sampling: str = typer.Option(
        None, "--sampling", help="weighted (with replacement), loss-weight or none."
    ),
    epochs: int = typer.Option(None, "--epochs", help="Maximum epochs (default 1000)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Train batch size (default 128)."),
    eval_batch_size: int = typer.Option(None, "--eval-batch-size", help="Validation batch size."),
    patience: int = typer.Option(None, "--patience", help="Early-stopping patience in epochs (default 50)."),
    min_epoch: int = typer.Option(
        None, "--min-epoch", help="First epoch counted for patience and selection."
    ),
    ema: float = typer.Option(None, "--ema", help="EMA decay of the monitored metric (0 = raw)."),
    monitor: str = typer.Option(None, "--monitor", help="Early-stopping metric (default val_balanced_acc)."),
    dtype: str = typer.Option("float32", "--dtype", help="Packed token cache: float32, float16 or bfloat16."),
    split_column: str = typer.Option("split", "--split-column", help="Column with train/val (e.g. fold2)."),
    folds: int = typer.Option(0, "--folds", help="k-fold mode: run fold0..fold<k-1>."),
    seeds: list[str] = typer.Option(None, "--seeds", help="Repeat with these seeds (mean/std in summary)."),
    shots: int = typer.Option(0, "--shots", help="Few-shot: K train cases per class."),
    tries: int = typer.Option(1, "--tries", help="Few-shot draws per seed."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    wandb: bool = typer.Option(
        False, "--wandb", help="Log to Weights & Biases (offline without an API key)."
    ),
    force: bool = typer.Option(False, "--force", help="Retrain diseases that are already DONE."),
) -> None:
    """Embedding aggregation (task 2): token heads x learning rates trained together on the packed tokens."""
    from ctfm.benchmark import load_benchmark
    from ctfm.errors import ConfigError
    from ctfm.probe.eao import eao_head_specs, eao_task
    from ctfm.probe.runner import ProbeOptions, run_probe
    from ctfm.probe.training import TrainConfig

    if shots < 0 or tries < 1 or folds < 0:
        raise ConfigError("--shots must be >= 0, --tries >= 1 and --folds >= 0")
    train = TrainConfig.from_benchmark(
        "eao",
        optimizer=optimizer,
        schedule=schedule,
        warmup_epochs=warmup_epochs,
        sampling=sampling,
        epochs=epochs,
        batch_size=batch_size,
        patience=patience,
        min_epoch=min_epoch,
        ema_decay=ema,
        monitor=monitor,
        device=device,
    )
    specs = eao_head_specs(
        split_list(head) or None,
        num_queries=num_queries,
        num_heads=num_heads,
        num_layers=num_layers,
        ffn_mult=ffn_mult,
        dropout=dropout,
        hidden=hidden,
    )
    options = ProbeOptions.defaults(
        section="eao",
        store=store,
        model=model,
        labels=labels,
        out=out,
        diseases=resolve_diseases(disease, all_),
        train=train,
        probe="+".join(s.name for s in specs),
        lrs=_numbers(lrs, float, "--lrs"),
        split_column=split_column,
        folds=folds,
        seeds=_numbers(seeds, int, "--seeds"),
        shots=shots,
        tries=tries,
        force=force,
        wandb=wandb,
    )
    wd = weight_decay if weight_decay is not None else float(load_benchmark().section("eao")["weight_decay"])
    options.weight_decays = [wd]

    def log(message: str) -> None:
        console.print(message, highlight=False)

    task = eao_task(options, specs, wd, dtype, eval_batch_size, log=log, progress=console.is_terminal)
    outcomes = run_probe(options, task, log=log)
    failed = print_outcomes(outcomes, f"ctfm probe eao — {options.model} -> {options.out}")
    if failed:
        console.print(f"[red]{failed} disease(s) failed[/]")
        raise typer.Exit(1)
