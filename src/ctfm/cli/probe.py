"""``ctfm probe``: train probes on stored embeddings (``lp``: linear probing; ``eao`` adds task 2).

List options take comma-separated values or repeat: ``--lrs 1e-3,1e-2`` or ``--seeds 0 --seeds 1``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

import typer

from ctfm.cli import library_log, new_console, plain, print_table, split_list
from ctfm.cli.cluster import DetachOpt, ExecutorOpt, SlurmOpt
from ctfm.core.benchmark import load_benchmark

if TYPE_CHECKING:
    from ctfm.probe.training import TrainConfig

probe_app = typer.Typer(help="Train probes on stored embeddings.", no_args_is_help=True)
console = new_console(stderr=True)

LP_SUMMARY = (
    "Linear probing (task 1): the reference grid of linear heads, trained as one batched computation."
)
EAO_SUMMARY = (
    "Embedding aggregation (task 2): token heads x learning rates trained together on the packed tokens."
)


def protocol_help(section: str, summary: str) -> str:
    """A command's help: what it does, then the protocol it follows unless told otherwise, read from
    ``configs/benchmark.yaml`` so ``--help`` never drifts from what runs."""
    c = load_benchmark().section(section)
    lrs = [float(v) for v in c["lrs"]]
    parts = [
        f"{len(lrs)} lrs {min(lrs):g}..{max(lrs):g}",
        "weight decays " + ", ".join(f"{float(w):g}" for w in c["weight_decays"]),
    ]
    if "norms" in c:
        parts.append("norms " + ", ".join(c["norms"]))
    if "head" in c:
        parts.append(
            f"head {c['head']} ({c['num_queries']} queries, {c['num_heads']} attention heads, "
            f"{c['num_layers']} layers, ffn x{c['ffn_mult']:g}, dropout {c['dropout']:g})"
        )
    parts += [
        f"{c['optimizer']}, batch {c['batch_size']}, {c['epochs']} epochs",
        f"schedule {c['schedule']} ({c['warmup_epochs']} warm-up epochs)",
        f"sampling {c['sampling']}",
        f"early stopping on {c['monitor']} (EMA {c['ema_decay']:g}), patience {c['patience']} from epoch "
        f"{c['min_epoch']}",
        "checkpoints " + ", ".join(c["strategies"]),
    ]
    return f"{summary}\n\nDefaults ({section} in configs/benchmark.yaml): {'; '.join(parts)}."


def register(app: typer.Typer) -> None:
    app.add_typer(probe_app, name="probe")


def _numbers(values: list[str] | None, kind: type, option: str) -> list[Any] | None:
    from ctfm.core.errors import ConfigError

    items = split_list(values)
    if not items:
        return None
    out = []
    for v in items:
        try:
            out.append(kind(v))
        except ValueError:
            raise ConfigError(
                f"{option}: {v!r} is not a{'n' if kind is int else ''} {kind.__name__}"
            ) from None
    return out


def _betas(values: list[str] | None) -> list[tuple[float, float]] | None:
    from ctfm.core.errors import ConfigError

    pairs = []
    for v in split_list(values):
        try:
            beta1, beta2 = (float(b) for b in v.split(":"))
        except ValueError:
            raise ConfigError(f"--betas expects beta1:beta2 pairs such as 0.9:0.999, got {v!r}") from None
        pairs.append((beta1, beta2))
    return pairs or None


def resolve_diseases(diseases: list[str] | None, all_: bool) -> list[str]:
    """``--disease`` names (checked against the benchmark) or every AMOS disease with ``--all``."""
    from ctfm.core.benchmark import load_benchmark
    from ctfm.core.errors import ConfigError

    bench = load_benchmark()
    names = split_list(diseases)
    if all_ and names:
        raise ConfigError("give --disease NAME ... or --all, not both")
    if all_:
        return list(bench.diseases)
    if not names:
        raise ConfigError("give --disease NAME (repeatable) or --all")
    return [bench.check_disease(d) for d in names]


def print_outcomes(outcomes: list[Any], title: str) -> None:
    """A table of per-disease results (a failed disease is only marked; :func:`_run` lists its error)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("disease", no_wrap=True)
    for col in ("status", "runs", "train/val", "missing", "val bacc", "val auroc", "seconds"):
        table.add_column(col)
    for o in outcomes:
        if o.status == "failed":
            table.add_row(o.disease, "[red]failed[/]")
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
    print_table(table)  # key column: disease


def run_with_progress(options: Any, title: str) -> Any:
    """Run every disease with a progress bar over runs (messages print above it)."""
    from ctfm.cli.progress import BarProgress
    from ctfm.core.progress import tracked
    from ctfm.probe.stage import run_probe

    total = len(options.diseases) * len(options.run_specs())
    with library_log(console), tracked(BarProgress(transient=True), title, total) as advance:
        return run_probe(options, on_run=lambda disease, tag: advance(1, label=f"{title} {disease} {tag}"))


# Options shared by ``lp`` and ``eao`` (declared once; options whose help differs stay in each command).
StoreOpt = Annotated[
    Path, typer.Option("--store", help="Embedding store root.", exists=True, file_okay=False)
]
ModelOpt = Annotated[str, typer.Option("--model", help="Model name in the store.")]
LabelsOpt = Annotated[
    Path, typer.Option("--labels", help="Folder of <disease>.csv label files.", exists=True, file_okay=False)
]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder (written into, never deleted).")]
DiseaseOpt = Annotated[
    list[str] | None, typer.Option("--disease", help="Disease(s) to probe (repeat or comma-separate).")
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every AMOS disease of the benchmark.")]
WeightDecaysOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--weight-decays",
        "--wds",
        "--weight-decay",
        help="Weight decays, e.g. 1e-4,1e-3 (eao: one value).",
    ),
]
ScheduleOpt = Annotated[
    str | None, typer.Option("--schedule", help="none, cosine (with warm-up) or onecycle.")
]
WarmupEpochsOpt = Annotated[
    float | None, typer.Option("--warmup-epochs", help="Linear warm-up length for cosine.")
]
SamplingOpt = Annotated[
    str | None,
    typer.Option(
        "--sampling",
        help="weighted (with replacement), weighted-scaled (reference EAO), loss-weight or none.",
    ),
]
MinEpochOpt = Annotated[
    int | None, typer.Option("--min-epoch", help="First epoch counted for patience and selection.")
]
EmaOpt = Annotated[float | None, typer.Option("--ema", help="EMA decay of the monitored metric (0 = raw).")]
SplitColumnOpt = Annotated[str, typer.Option("--split-column", help="Column with train/val (e.g. fold2).")]
SeedsOpt = Annotated[
    list[str] | None, typer.Option("--seeds", help="Repeat with these seeds (mean/std in summary).")
]
ShotsOpt = Annotated[int, typer.Option("--shots", help="Few-shot: K train cases per class.")]
TriesOpt = Annotated[int, typer.Option("--tries", help="Few-shot draws per seed.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
WandbOpt = Annotated[
    bool, typer.Option("--wandb", help="Log to Weights & Biases (offline without an API key).")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Retrain diseases that are already DONE.")]


# The training rules both tasks take from the command line (TrainConfig fields; --ema sets ema_decay).
TRAIN_OPTIONS = (
    "optimizer", "schedule", "warmup_epochs", "sampling", "epochs", "batch_size",
    "patience", "min_epoch", "ema", "monitor", "device", "threads",
)  # fmt: skip


def _inputs(
    store: StoreOpt,
    model: ModelOpt,
    labels: LabelsOpt,
    out: OutOpt,
    disease: DiseaseOpt = None,
    all_: AllOpt = False,
) -> None:
    """The options both probe commands start with (:func:`_with_run_options` adds them)."""


def _run_options(
    seeds: SeedsOpt = None,
    shots: ShotsOpt = 0,
    tries: TriesOpt = 1,
    device: DeviceOpt = "auto",
    wandb: WandbOpt = False,
    force: ForceOpt = False,
    executor: ExecutorOpt = "local",
    slurm: SlurmOpt = None,
    detach: DetachOpt = False,
) -> None:
    """The options both probe commands end with, declared once (:func:`_with_run_options` adds them)."""


def _with_run_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` between :func:`_inputs`' and :func:`_run_options`' parameters, which reach it in ``**run``:
    Typer reads the combined signature, so each option shared by ``lp`` and ``eao`` is declared once."""
    hints = {
        k: v
        for f in (_inputs, command, _run_options)
        for k, v in get_type_hints(f, include_extras=True).items()
    }
    own = [p for p in inspect.signature(command).parameters.values() if p.kind is not p.VAR_KEYWORD]
    lead, tail = (list(inspect.signature(f).parameters.values()) for f in (_inputs, _run_options))
    params = [p.replace(annotation=hints[p.name]) for p in lead + own + tail]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        command(**kwargs)

    del wrapper.__wrapped__  # Typer reads the signature below, not the command's
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def _train_config(section: str, args: dict[str, Any]) -> TrainConfig:
    """Check the run options and build ``section``'s training rules from a command's arguments (None: config)."""
    from ctfm.core.errors import ConfigError
    from ctfm.probe.training import TrainConfig

    if args["shots"] < 0 or args["tries"] < 1 or args["folds"] < 0:
        raise ConfigError("--shots must be >= 0, --tries >= 1 and --folds >= 0")
    given = {("ema_decay" if name == "ema" else name): args[name] for name in TRAIN_OPTIONS if name in args}
    return TrainConfig.from_benchmark(section, **given)


def _shared_options(args: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~ctfm.probe.options.ProbeOptions` fields ``lp`` and ``eao`` both take from their arguments."""
    return {
        "store": args["store"],
        "model": args["model"],
        "labels": args["labels"],
        "out": args["out"],
        "diseases": resolve_diseases(args["disease"], args["all_"]),
        "lrs": _numbers(args["lrs"], float, "--lrs"),
        "weight_decays": _numbers(args["wds"], float, "--weight-decays"),
        "split_column": args["split_column"],
        "folds": args["folds"],
        "seeds": _numbers(args["seeds"], int, "--seeds"),
        "shots": args["shots"],
        "tries": args["tries"],
        "force": args["force"],
        "wandb": args["wandb"],
    }


def _run(options: Any, args: dict[str, Any]) -> None:
    """Run the probe stage here or on Slurm, print the per-disease table; exit 1 when any disease failed."""
    from ctfm.cli.cluster import probe_via_slurm
    from ctfm.executor.config import executor_from_options
    from ctfm.probe.stage import run_probe

    cluster = executor_from_options(args["executor"], args["slurm"])
    if cluster.kind == "slurm":
        result = probe_via_slurm(options, cluster, args["detach"])
        if result is None:
            return
    elif options.task == "lp":
        result = run_with_progress(options, "probe lp")
    else:  # eao draws a bar over each disease's epochs
        from ctfm.cli.progress import BarProgress

        with library_log(console):
            result = run_probe(options, progress=BarProgress(transient=True))
    print_outcomes(result.outcomes, f"ctfm probe {options.task} — {options.model} -> {options.out}")
    for o in result.failed:
        console.print(f"[red]failed {o.disease}: {plain(o.error)}[/]", highlight=False)
    if result.failed:
        console.print(f"[red]{len(result.failed)} disease(s) failed[/]")
        raise typer.Exit(1)


@probe_app.command("lp", help=protocol_help("linear_probe", LP_SUMMARY))
@_with_run_options
def lp(
    probe: Annotated[
        str, typer.Option("--probe", help="grid (batched linear heads) or logreg (scikit-learn).")
    ] = "grid",
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="adamw or sgd.")] = None,
    schedule: ScheduleOpt = None,
    warmup_epochs: WarmupEpochsOpt = None,
    sampling: SamplingOpt = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Maximum epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Batch size.")] = None,
    lrs: Annotated[list[str] | None, typer.Option("--lrs", help="Learning rates, e.g. 1e-4,1e-3.")] = None,
    wds: WeightDecaysOpt = None,
    norms: Annotated[list[str] | None, typer.Option("--norms", help="Input norms: raw, l2, std, ln.")] = None,
    betas: Annotated[
        list[str] | None, typer.Option("--betas", help="AdamW beta pairs b1:b2 (grid axis).")
    ] = None,
    eps: Annotated[list[str] | None, typer.Option("--eps", help="AdamW eps values (grid axis).")] = None,
    cs: Annotated[list[str] | None, typer.Option("--cs", help="C values swept by --probe logreg.")] = None,
    patience: Annotated[
        int | None, typer.Option("--patience", help="Early-stopping patience in epochs.")
    ] = None,
    min_epoch: MinEpochOpt = None,
    ema: EmaOpt = None,
    monitor: Annotated[
        str | None, typer.Option("--monitor", help="Early-stopping metric (a strategy name).")
    ] = None,
    split_column: SplitColumnOpt = "split",
    folds: Annotated[
        int, typer.Option("--folds", help="k-fold mode: run fold0..fold<k-1>, each fold's val is its val.")
    ] = 0,
    threads: Annotated[
        int, typer.Option("--threads", help="CPU threads while training (0: torch default).")
    ] = 1,
    **run: Any,
) -> None:
    """See ``LP_SUMMARY``; ``--help`` adds the protocol defaults."""
    from ctfm.probe.options import ProbeOptions

    args = locals() | run
    options = ProbeOptions.defaults(
        "lp",
        train=_train_config("linear_probe", args),
        probe=probe,
        norms=split_list(norms) or None,
        betas=_betas(betas),
        eps=_numbers(eps, float, "--eps"),
        logreg_cs=_numbers(cs, float, "--cs"),
        **_shared_options(args),
    )
    _run(options, args)


@probe_app.command("eao", help=protocol_help("eao", EAO_SUMMARY))
@_with_run_options
def eao(
    head: Annotated[
        list[str] | None,
        typer.Option("--head", help="Head(s): attn-pool, mean-linear, abmil, mlp."),
    ] = None,
    num_queries: Annotated[
        int | None, typer.Option("--num-queries", help="attn-pool learnable queries.")
    ] = None,
    num_heads: Annotated[int | None, typer.Option("--num-heads", help="attn-pool attention heads.")] = None,
    num_layers: Annotated[
        int | None, typer.Option("--num-layers", help="attn-pool cross-attention layers.")
    ] = None,
    ffn_mult: Annotated[
        float | None, typer.Option("--ffn-mult", help="attn-pool feed-forward width multiplier.")
    ] = None,
    dropout: Annotated[
        float | None, typer.Option("--dropout", help="Dropout of attn-pool, abmil and mlp.")
    ] = None,
    hidden: Annotated[
        int | None, typer.Option("--hidden", help="Hidden width of abmil (128) and mlp (256).")
    ] = None,
    lrs: Annotated[list[str] | None, typer.Option("--lrs", help="Learning rates, e.g. 1e-4,1e-3.")] = None,
    wds: WeightDecaysOpt = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="adamw or sgd.")] = None,
    schedule: ScheduleOpt = None,
    warmup_epochs: WarmupEpochsOpt = None,
    sampling: SamplingOpt = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Maximum epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Train batch size.")] = None,
    eval_batch_size: Annotated[
        int | None,
        typer.Option(
            "--eval-batch-size",
            help="Validation batch size (default: up to 16,384 tokens, at least 4x --batch-size).",
        ),
    ] = None,
    cuda_graphs: Annotated[
        bool,
        typer.Option(
            "--cuda-graphs/--no-cuda-graphs",
            help="On a GPU with the constant schedule (none, the default), replay each batch shape's training "
            "step as one CUDA graph: the same steps, about 8x faster.",
        ),
    ] = True,
    patience: Annotated[
        int | None, typer.Option("--patience", help="Early-stopping patience in epochs.")
    ] = None,
    min_epoch: MinEpochOpt = None,
    ema: EmaOpt = None,
    monitor: Annotated[str | None, typer.Option("--monitor", help="Early-stopping metric.")] = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Packed token cache: float32, float16 or bfloat16.")
    ] = "float32",
    split_column: SplitColumnOpt = "split",
    folds: Annotated[int, typer.Option("--folds", help="k-fold mode: run fold0..fold<k-1>.")] = 0,
    **run: Any,
) -> None:
    """See ``EAO_SUMMARY``; ``--help`` adds the protocol defaults."""
    from ctfm.probe.eao_grid import eao_head_specs
    from ctfm.probe.options import ProbeOptions

    args = locals() | run
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
        "eao",
        train=_train_config("eao", args),
        heads=specs,
        dtype=dtype,
        eval_batch_size=eval_batch_size,
        cuda_graphs=cuda_graphs,
        **_shared_options(args),
    )
    _run(options, args)
