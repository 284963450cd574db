"""``ctfm status OUT`` (what a cluster job's tasks are doing), the hidden ``ctfm _task`` every array task
runs, and the ``--executor`` options ``extract`` and ``probe`` share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ctfm.cli import library_log, new_console, plain, print_table

ExecutorOpt = Annotated[
    str, typer.Option("--executor", help="local (this process) or slurm (job arrays; see --slurm).")
]
SlurmOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--slurm",
        help="Slurm setting KEY=VALUE (repeatable): partition, gpus_per_task, cpus_per_task, mem, time, "
        "max_parallel, cases_per_task, sbatch (further sbatch options), poll_s.",
    ),
]
DetachOpt = Annotated[
    bool, typer.Option("--detach", help="Slurm: submit and return at once; follow with `ctfm status OUT`.")
]


def register(app: typer.Typer) -> None:
    app.command("status")(status_cmd)
    app.command("_task", hidden=True)(task_cmd)


def status_cmd(
    out: Path = typer.Argument(..., help="The store, probe output or run output the job writes."),
    merge: bool = typer.Option(
        True, "--merge/--no-merge", help="Fold finished extraction tasks' shards into their views."
    ),
) -> None:
    """What each cluster job under OUT is doing: every task done, running, pending or failed (with its Slurm
    job id, why, and its log). Exit 1 while the latest job on some views or folders has a failed task (a
    rerun that finished the work clears it)."""
    from ctfm.executor.jobs import jobs_root, list_jobs
    from ctfm.executor.submit import task_states

    console = new_console()
    jobs = list_jobs(jobs_root(out))
    if not jobs:
        console.print(f"{plain(out)}: no cluster job was submitted here", highlight=False)
        return
    failed: dict[tuple[str, ...], bool] = {}  # the latest job per set of targets
    for job in jobs:
        meta = job.meta()
        states = task_states(job)
        table = _task_table(states, f"{meta['name']}: Slurm job {meta.get('slurm_id', '-')} ({job.path})")
        print_table(table, console)
        failed[tuple(meta.get("targets", []))] = any(s.state == "failed" for s in states)
        if merge and all(s.finished for s in states):
            _merge_targets(meta.get("targets", []), console)
    if any(failed.values()):
        raise typer.Exit(1)


def _task_table(states: list[Any], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col in ("task", "cases / disease", "state", "slurm id", "why", "log"):
        table.add_column(col)
    colour = {"done": "green", "failed": "red", "incomplete": "yellow", "running": "cyan"}
    for s in states:
        shown = f"[{colour[s.state]}]{s.state}[/]" if s.state in colour else s.state
        log = plain(s.log) if s.state in ("failed", "incomplete") else ""
        table.add_row(str(s.index), plain(s.label), shown, s.job_id, plain(s.reason), log)
    return table


def _merge_targets(targets: list[str], console: Any) -> None:
    """Merge the shards of a finished job's store views (skipped while another process holds a view)."""
    from ctfm.core.errors import DataError
    from ctfm.core.fsutil import exclusive_use
    from ctfm.store.shards import merge_shards, shard_dirs, view_at

    for target in targets:
        if not (Path(target) / "shards").is_dir():
            continue
        view = view_at(Path(target))
        if not shard_dirs(view):
            continue
        try:
            with exclusive_use(view.dir):
                report = merge_shards(view)
        except DataError as exc:
            console.print(f"[yellow]{plain(exc)}[/]", highlight=False)
            continue
        console.print(f"{view}: merged {report.merged} case(s) from its tasks' shards", highlight=False)


def print_tasks(states: list[Any], console: Any) -> bool:
    """After a wait: the tasks that did not finish cleanly; returns whether any failed outright."""
    bad = [s for s in states if s.state != "done"]
    if bad:
        print_table(_task_table(bad, "tasks that did not finish cleanly"), console)
    return any(s.state == "failed" for s in states)


def task_cmd(job: Path = typer.Argument(...), index: int = typer.Argument(...)) -> None:
    """Run array task INDEX of the job folder JOB (what each Slurm array task runs)."""
    import logging
    import sys

    from ctfm.executor.task import run_task

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")  # into the task's log
    code = run_task(job, index)
    if code:
        raise typer.Exit(code)


def extract_via_slurm(cfgs: list[Any], executor: Any, store: Path, detach: bool) -> None:
    """``ctfm extract --executor slurm`` with built-in extractors: submit, wait (or detach), report per view."""
    from ctfm.cli.extract import print_summary
    from ctfm.cli.progress import BarProgress
    from ctfm.executor.extract import extract_on_cluster
    from ctfm.executor.jobs import jobs_root

    console = new_console()
    with library_log(console):
        run = extract_on_cluster(cfgs, executor, jobs_root(store), detach, BarProgress())
    if _detached(run.job, detach, store, console):
        return
    for summary in run.summaries:
        print_summary(console, summary)
    if print_tasks(run.states, console) or any(s.failed for s in run.summaries):
        raise typer.Exit(1)


def _detached(job: Any, detach: bool, out: Path, console: Any) -> bool:
    """True when the command returns without waiting (then it says how to follow the job)."""
    if job is None:
        console.print("nothing to submit: every selected case is stored", highlight=False)
        return False
    if detach:
        console.print(f"follow it with: ctfm status {plain(out)}", highlight=False)
    return detach


def containers_via_slurm(options: Any, executor: Any, detach: bool) -> None:
    """``ctfm extract --containers ... --executor slurm``: the tasks' states (team tables in their logs)."""
    from ctfm.cli.progress import BarProgress
    from ctfm.executor.extract import containers_on_cluster
    from ctfm.executor.jobs import jobs_root

    console = new_console()
    with library_log(console):
        run = containers_on_cluster(options, executor, jobs_root(options.store), detach, BarProgress())
    if _detached(run.job, detach, options.store, console):
        return
    if print_tasks(run.states, console) or any(s.state != "done" for s in run.states):
        raise typer.Exit(1)


def probe_via_slurm(options: Any, executor: Any, detach: bool) -> Any:
    """``ctfm probe lp|eao --executor slurm``: the probe's result, or None when detached."""
    from ctfm.cli.progress import BarProgress
    from ctfm.executor.jobs import jobs_root
    from ctfm.executor.probe import probe_on_cluster

    console = new_console()
    with library_log(console):
        job, result = probe_on_cluster(options, executor, jobs_root(options.out), detach, BarProgress())
    return None if _detached(job, detach, options.out, console) else result
