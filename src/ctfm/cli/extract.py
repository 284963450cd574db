"""``ctfm extract``: embeddings of every image into the store, in-process (``run_local``).

The command only builds an :class:`ctfm.extract.local.ExtractConfig` and hands it to a runner, then prints the
summary, so another runner (containers) is one more branch in :func:`extract_cmd`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ctfm.cli import default, first_names, new_console, one_value, plain, print_table, split_list
from ctfm.cli.check_container import GpusOpt, MemoryOpt, ScratchOpt, TimeoutOpt
from ctfm.cli.cluster import DetachOpt, ExecutorOpt, SlurmOpt


def extract_cmd(
    extractor: str | None = typer.Option(
        None, "--extractor", help="Extractor name: hu-stats, cnn3d or a ctfm.extractors plug-in."
    ),
    images: Path = typer.Option(..., "--images", help="Folder of <case>.nii.gz CT volumes (HU)."),
    store: Path = typer.Option(..., "--store", help="Embedding store root."),
    task: str = typer.Option(
        "lp", "--task", help="lp (vector per case) or eao (token grid per case); extractors also take lp,eao."
    ),
    masks: Path | None = typer.Option(
        None, "--masks", help="fg_masks/<disease> or the fg_masks root; without it the view is 'full'."
    ),
    diseases: list[str] | None = typer.Option(
        None,
        "--disease",
        help="ROI disease whose mask centres the crop. Extractors: several (a,b) fill their views in one pass "
        "over the images; containers: one per run.",
    ),
    model: str | None = typer.Option(None, "--model", help="Model name in the store (default: extractor)."),
    workers: int = typer.Option(1, "--workers", help="DataLoader workers reading/preprocessing ahead."),
    batch_size: int = typer.Option(1, "--batch-size", help="Volumes per model call."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    weights: Path | None = typer.Option(
        None, "--weights", help="Model weights (state_dict) instead of seeded."
    ),
    force: bool = typer.Option(False, "--force", help="Redo cases that are already ok."),
    cases: str | None = typer.Option(None, "--cases", help="File with one case per line, or a,b,c."),
    seed: int = typer.Option(0, "--seed", help="Seed for extractors with random weights."),
    containers: Path | None = typer.Option(
        None, "--containers", help="Run team containers: folder of <team>_lp.tar.gz / <team>_eao.tar.gz."
    ),
    image: list[str] = typer.Option([], "--image", help="Run a local team image by tag (repeatable)."),
    gpus: GpusOpt = "",
    memory: MemoryOpt = default("container_limits", "memory"),
    scratch: ScratchOpt = default("container_limits", "scratch"),
    timeout_per_case: TimeoutOpt = default("container_limits", "timeout_per_case_s"),
    per_case: bool = typer.Option(False, "--per-case", help="Containers: one container per case."),
    batch_cases: int = typer.Option(16, "--batch-cases", help="Containers: cases per container."),
    keep_images: bool = typer.Option(False, "--keep-images", help="Containers: keep loaded images."),
    cpuset: str | None = typer.Option(None, "--cpuset", help="Containers: CPU set, e.g. 0-7."),
    executor: ExecutorOpt = "local",
    slurm: SlurmOpt = None,
    detach: DetachOpt = False,
) -> None:
    """Extract embeddings into the store; resumable, failed cases recorded, exit 1 if any failed."""
    from ctfm.executor.config import executor_from_options

    cluster = executor_from_options(executor, slurm)
    if (containers is not None or image) and extractor:
        from ctfm.core.errors import ConfigError

        raise ConfigError("--extractor runs a built-in extractor, --containers/--image team images: pass one")
    if containers is not None or image:
        from ctfm.cli.check_container import container_settings, extract_with_containers
        from ctfm.extract.containers import ContainerRunOptions
        from ctfm.extract.inputs import read_case_list, resolve_view

        view, mask_dir = resolve_view(masks, one_value(diseases, "--disease"))
        settings = container_settings(gpus, task=task, memory=memory, scratch=scratch,
                                      timeout_per_case=timeout_per_case, per_case=per_case,
                                      batch_cases=batch_cases, keep_images=keep_images, cpuset=cpuset,
                                      force=force)  # fmt: skip
        options = ContainerRunOptions(store, images, settings, containers, tuple(image), mask_dir, view,
                                      read_case_list(cases))  # fmt: skip
        extract_with_containers(options, cluster, detach)
        return
    from ctfm.cli.progress import BarProgress
    from ctfm.core.errors import ConfigError
    from ctfm.extract.inputs import read_case_list
    from ctfm.extract.local import ExtractConfig, run_local_many

    if not extractor:
        raise ConfigError("pass --extractor NAME (built-ins: hu-stats, cnn3d)")
    console = new_console()
    shared = {
        "extractor": extractor, "images": images, "store": store, "masks": masks, "model": model,
        "workers": workers, "batch_size": batch_size, "device": device, "weights": weights, "force": force,
        "cases": read_case_list(cases), "seed": seed,
    }  # fmt: skip
    cfgs = [
        ExtractConfig(task=t, disease=d, **shared)
        for t in split_list([task]) or ["lp"]
        for d in split_list(diseases) or [None]
    ]
    if cluster.kind == "slurm":
        from ctfm.cli.cluster import extract_via_slurm

        extract_via_slurm(cfgs, cluster, store, detach)
        return
    summaries = run_local_many(cfgs, BarProgress())
    for summary in summaries:
        print_summary(console, summary)
    if any(summary.failed for summary in summaries):
        raise typer.Exit(1)


def print_summary(console: Any, summary: Any) -> None:
    """Counts, throughput and the time split; then every failed case with its reason."""
    from rich.table import Table

    table = Table(title=f"extract {summary.view}")
    for col in ("ok", "failed", "skipped", "volumes/s", "read s", "preprocess s", "model s", "wall s"):
        table.add_column(col, justify="right")
    table.add_row(
        str(len(summary.ok)),
        str(len(summary.failed)),
        str(len(summary.skipped)),
        f"{summary.volumes_per_second:.2f}",
        f"{summary.read_seconds:.1f}",
        f"{summary.preprocess_seconds:.1f}",
        f"{summary.model_seconds:.1f}",
        f"{summary.wall_seconds:.1f}",
    )
    print_table(table, console)
    if summary.changed:
        console.print(
            f"extracted again {len(summary.changed)} stored case(s) whose image, mask or extraction settings "
            f"changed: {first_names(summary.changed)}",
            highlight=False,
            soft_wrap=True,
        )
    for case, error in summary.failed:
        console.print(f"[red]failed[/] {plain(case)}: {plain(error)}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("extract")(extract_cmd)
