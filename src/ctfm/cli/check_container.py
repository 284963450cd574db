"""``ctfm check-container``: the participants' dry run of a team image, and the container branch of extract.

Both run the image exactly as the organizers do (:mod:`ctfm.extract.containers`); this module only parses
options and prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from ctfm.cli import default, new_console, one_value, plain

GpusOpt = Annotated[
    str, typer.Option("--gpus", help="Containers: GPU ids, e.g. 0,1 (one container per GPU).")
]
MemoryOpt = Annotated[str, typer.Option("--memory", help="Containers: memory limit (swap equal).")]
ScratchOpt = Annotated[
    str,
    typer.Option(
        "--scratch", help="Containers: what each may write in its own file system (kernel-enforced)."
    ),
]
TimeoutOpt = Annotated[
    float,
    typer.Option("--timeout-per-case", help="Containers: wall-clock seconds per case (batch: x cases)."),
]


def container_settings(gpus: str, **settings: Any) -> Any:
    """The containers' :class:`~ctfm.extract.containers.RunSettings` from the options (``--gpus 0,1``)."""
    from ctfm.extract.containers import RunSettings

    return RunSettings(gpus=tuple(g.strip() for g in gpus.split(",") if g.strip()), **settings)


def extract_with_containers(options: Any, executor: Any = None, detach: bool = False) -> None:
    """``ctfm extract --containers DIR | --image TAG`` (a :class:`~ctfm.extract.containers.ContainerRunOptions`):
    run here or on the cluster, print the team table, exit 1 on any failure."""
    from ctfm.cli.progress import BarProgress
    from ctfm.extract.containers import run_containers

    if executor is not None and executor.kind == "slurm":
        from ctfm.cli.cluster import containers_via_slurm

        containers_via_slurm(options, executor, detach)
        return
    console = new_console()
    reports = run_containers(
        options,
        log=lambda msg: console.print(f"[yellow]{plain(msg)}[/]", highlight=False, soft_wrap=True),
        progress=BarProgress(),
    )
    console.print(team_table(reports))
    failed = False
    for r in reports:
        if r.error:  # not run at all, or stopped part-way (its store could not be written)
            failed = True
            label = "stopped" if r.outcomes else "not run"
            console.print(
                f"[red]{label}[/] {plain(r.team)}: {plain(r.error)}", highlight=False, soft_wrap=True
            )
            if not r.outcomes:
                continue
        for case, o in sorted(r.outcomes.items()):
            if o.status != "ok":
                failed = True
                console.print(
                    f"[red]{o.status}[/] {plain(r.team)} {plain(case)}: {plain(o.error)}",
                    highlight=False,
                    soft_wrap=True,
                )
        if r.stray:
            console.print(
                f"[yellow]{plain(r.team)}: stray files (reported, not stored): "
                f"{plain(', '.join(sorted(set(r.stray))[:20]))}[/]",
                highlight=False,
                soft_wrap=True,
            )
        console.print(
            f"{r.team}: container log {r.log_path}; timing {r.timing_csv or '-'}",
            markup=False,
            highlight=False,
        )
    if failed:
        raise typer.Exit(1)


def team_table(reports: Sequence[Any]) -> Any:
    """The end-of-run table: team, ok, failed, timeout, skipped, median s/case, image size."""
    from rich.table import Table

    from ctfm.extract.containers.teams import human_bytes

    table = Table(title="container extraction")
    for col in ("team", "ok", "failed", "timeout", "skipped", "median s/case", "image size"):
        table.add_column(col, justify="left" if col == "team" else "right", overflow="fold")
    for r in reports:
        if r.error and not r.outcomes:
            table.add_row(plain(r.team), "-", "not run", "-", "-", "-", "-")
            continue
        table.add_row(
            plain(r.team),
            str(r.count("ok")),
            str(r.count("failed")),
            str(r.count("timeout")),
            str(r.skipped),
            "-" if r.median_s is None else f"{r.median_s:.2f}",
            human_bytes(r.image_size),
        )
    return table


def _demo_inputs(images: Path | None, disease: str | None, tmp: Path) -> tuple[Path, Path | None]:
    """Images (and the disease's masks) to try: ``--images`` (a test_demo folder or plain images) or synthetic."""
    if images is None:
        from ctfm.data.synth import generate_benchmark

        root = generate_benchmark(tmp / "synth", cases=12, seed=0, shape="demo") / "test_demo"
    else:
        root = Path(images)
        if not root.is_dir():
            from ctfm.core.errors import DataError

            raise DataError(f"{root}: not a folder; pass a test_demo folder or a folder of .nii.gz volumes")
    img_dir = root / "images" if (root / "images").is_dir() else root
    masks = None
    if disease is not None:
        from ctfm.core.benchmark import load_benchmark

        if load_benchmark().is_roi(disease):
            from ctfm.extract.inputs import resolve_mask_dir

            masks = resolve_mask_dir(root / "fg_masks" if (root / "fg_masks").is_dir() else root, disease)
    return img_dir, masks


def check_container_cmd(
    image: str = typer.Argument(..., help="Team tarball (<team>_lp.tar.gz) or a local image tag."),
    task: str = typer.Option("lp", "--task", help="lp or eao: which entry script to run."),
    diseases: list[str] | None = typer.Option(
        None, "--disease", help="ROI disease: mount its masks as MASKS_DIR (one per run)."
    ),
    images: Path | None = typer.Option(
        None, "--images", help="test_demo folder or folder of .nii.gz (default: a synthetic test_demo)."
    ),
    gpus: GpusOpt = "",
    memory: MemoryOpt = default("container_limits", "memory"),
    scratch: ScratchOpt = default("container_limits", "scratch"),
    timeout_per_case: TimeoutOpt = default("container_limits", "timeout_per_case_s"),
    log: Path | None = typer.Option(None, "--log", help="Write the container's stdout/stderr here."),
) -> None:
    """Dry-run a team image under the production settings; prints pass/fail per check, exit 1 on fail."""
    from rich.table import Table

    from ctfm.extract.containers import check_container, temporary_folder

    disease = one_value(diseases, "--disease")

    console = new_console()
    settings = container_settings(
        gpus, task=task, memory=memory, scratch=scratch, timeout_per_case=timeout_per_case
    )
    with temporary_folder("ctfm-demo-") as tmp:
        img_dir, masks = _demo_inputs(images, disease, tmp)
        report = check_container(
            image,
            img_dir,
            settings,
            masks_dir=masks,
            log=lambda msg: console.print(f"[yellow]{plain(msg)}[/]", highlight=False),
            log_path=log,
        )
    table = Table(
        title=f"check-container {image} ({task}, {report.cases} cases, image {report.image.image_id[:19]})"
    )
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for item in report.items:
        table.add_row(item.name, "[green]pass[/]" if item.passed else "[red]FAIL[/]", item.detail)
    console.print(table)
    if report.passed:
        console.print("[bold green]PASS[/]: the container respects the contract")
        return
    console.print(
        "[bold red]FAIL[/]: fix the failing checks above" + (f"; container log: {plain(log)}" if log else "")
    )
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("check-container")(check_container_cmd)
