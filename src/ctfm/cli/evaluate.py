"""``ctfm eval`` (score probe checkpoints or a predictions file) and ``ctfm leaderboard`` (rank models).

List options take comma-separated values or repeat: ``--metrics balanced_acc,auroc`` or
``--strategy val_auroc --strategy val_loss``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ctfm.cli import default, new_console, one_value, plain, print_table, split_list

if TYPE_CHECKING:
    import pandas as pd
    from rich.table import Table

console = new_console(stderr=True)
METRIC_KEYS = 3  # model, disease, strategy: repeated when a narrow terminal splits the metrics table
LEADERBOARD_KEYS = 2  # rank, model
# Options ``eval`` and ``leaderboard`` share (declared once).
RESAMPLING_OPTION = typer.Option(
    default("evaluation", "resampling"),
    "--resampling",
    help="Bootstrap scheme: stratified (cases drawn within each class) or plain (from all cases).",
)
SEED_OPTION = typer.Option(0, "--seed", help="Bootstrap seed.")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("leaderboard")(leaderboard_command)


def metrics_table(rows: list[dict], title: str) -> Table:
    """One row per scored head: every metric with its 95 % interval ("-" where undefined, e.g. ``pos_*`` of a
    multiclass head)."""
    from rich.table import Table

    from ctfm.core.metrics import METRICS

    table = Table(title=title)
    for col in ("model", "disease", "strategy", "failed", *METRICS):
        table.add_column(col, justify="left" if col in ("model", "disease", "strategy") else "right")
    for r in rows:
        cells = [
            plain(r["model"]),
            plain(r["disease"]),
            plain(r["strategy"] + (f" ({r['tag']})" if r.get("tag") else "")),
        ]
        cells.append(f"{r['n_missing_failed']}/{r['n_real'] + r['n_missing_failed']}")
        cells += [_metric_cell(r, m) for m in METRICS]
        table.add_row(*cells)
    return table


def _metric_cell(row: dict, metric: str) -> str:
    value = row[metric]
    if value != value:
        return "-"
    return plain(f"{value:.3f}" + _interval(row[metric + "_ci_low"], row[metric + "_ci_high"], ".3f"))


def _warn_split(split: str) -> None:
    """Say it when the scores are of a split the heads were selected (or trained) on."""
    from ctfm.evaluate.splits import split_warning

    if split_warning(split):
        console.print(f"[yellow]warning:[/] {plain(split_warning(split))}", highlight=False, soft_wrap=True)


def _table_title(split: str, what: str) -> str:
    from ctfm.evaluate.splits import split_note

    return f"{split_note(split) or split}: {what}"


def eval_command(
    runs: Path = typer.Option(None, "--runs", help="Probe output folder (`ctfm probe --out`)."),
    store: Path = typer.Option(
        None, "--store", help="Embedding store the heads were trained on.", exists=True, file_okay=False
    ),
    labels: Path = typer.Option(
        None,
        "--labels",
        help="Labels folder (<disease>.csv), or one label CSV with --predictions.",
        exists=True,
    ),
    split: str = typer.Option(
        None,
        "--split",
        help=f"Split to score: val, test or train (default {default('evaluation', 'split')}, the split the "
        "heads were selected on; with --predictions and --labels: the split its file name starts with, e.g. "
        "val_per_sample_predictions.csv, else every labelled case). Every labelled case of it counts.",
    ),
    strategy: list[str] = typer.Option(
        None, "--strategy", help="Checkpoint strategies to score (default: all)."
    ),
    predictions: Path = typer.Option(
        None, "--predictions", help="Score a per-sample predictions CSV instead of checkpoints."
    ),
    disease: list[str] = typer.Option(
        None, "--disease", help="With --predictions and a labels folder: the target."
    ),
    model: str = typer.Option(
        None, "--model", help="With --predictions: model name (default: the CSV's folder)."
    ),
    task: str = typer.Option(
        None, "--task", help="With --predictions: lp or eao, the leaderboard the result is ranked on."
    ),
    bootstrap: int = typer.Option(
        default("evaluation", "bootstrap"),
        "--bootstrap",
        help="Bootstrap resamples for the 95 % intervals (0: none).",
        min=0,
    ),
    resampling: str = RESAMPLING_OPTION,
    seed: int = SEED_OPTION,
    reference_layout: Path = typer.Option(
        None,
        "--reference-layout",
        help="Also lay the results out as the reference's scorer and organizer scripts read them: "
        "DIR/<model>/<disease>/results/<split>_per_sample_predictions_<strategy>.csv (their --csv_root is "
        "DIR/<model>).",
    ),
    out: Path = typer.Option(..., "--out", help="Output folder."),
) -> None:
    """Score probe heads on a split (every case counts; missing embeddings are failures) with 95 % CIs."""
    from ctfm.core.errors import ConfigError
    from ctfm.evaluate.stage import check_resampling

    if predictions is not None:
        if task not in (None, "lp", "eao"):
            raise ConfigError(f"--task must be lp or eao, not {task!r}")
        if reference_layout is not None:
            raise ConfigError("--reference-layout goes with checkpoints; a predictions file is in it already")
        _score_predictions(
            predictions, out, labels, one_value(disease, "--disease"), split, bootstrap, seed, model, task,
            check_resampling(resampling),
        )  # fmt: skip
        return
    unused = [name for name, v in (("--disease", disease), ("--model", model), ("--task", task)) if v]
    if unused:
        verb = "goes" if len(unused) == 1 else "go"
        raise ConfigError(f"{' and '.join(unused)} {verb} with --predictions; checkpoints name their own")
    missing = [name for name, v in (("--runs", runs), ("--store", store), ("--labels", labels)) if v is None]
    if missing:
        raise ConfigError(f"ctfm eval needs {', '.join(missing)} (or --predictions CSV)")
    from ctfm.evaluate.stage import EvalOptions

    options = EvalOptions(
        runs, store, labels, out, split or default("evaluation", "split"), split_list(strategy) or None,
        bootstrap, resampling, seed, reference_layout,
    )  # fmt: skip
    _score_checkpoints(options)


def _score_predictions(predictions: Path, out: Path, labels: Path | None, *args: Any) -> None:
    """``ctfm eval --predictions``: score one file and print its row."""
    from ctfm.evaluate.predictions import evaluate_predictions

    result = evaluate_predictions(predictions, out, labels, *args)
    cases = "every labelled case" if result.split == "all" else f"split {result.split}"
    print_table(metrics_table([result.row()], _table_title(result.split, predictions.name)), keys=METRIC_KEYS)
    _warn_split(result.split)
    if labels is None:
        console.print(
            "[yellow]warning:[/] labels taken from the file: a case absent from it cannot be counted as a "
            "failure; pass --labels to score every labelled case",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(
            f"scored {cases}: {result.n_cases} case(s), {result.failed_cases} absent or flagged missing "
            "(scored as failures)",
            markup=False,
        )
    console.print(f"wrote {out}", markup=False)


def _score_checkpoints(options: Any) -> None:
    """``ctfm eval --runs``: score every head with a progress bar, print the table, exit 1 on any error."""
    from ctfm.cli.progress import BarProgress
    from ctfm.core.errors import CtfmError
    from ctfm.evaluate.stage import run_eval

    run = run_eval(options, progress=BarProgress(transient=True))
    for folder in run.removed:
        console.print(
            f"removed the earlier {options.split} result in {folder}: no current head made it", markup=False
        )
    if run.results:
        rows = [r.row() for r in run.results]
        print_table(
            metrics_table(rows, _table_title(options.split, f"{len(rows)} head(s)")), keys=METRIC_KEYS
        )
        _warn_split(options.split)
        if run.failed_cases:
            console.print(
                f"[yellow]{run.failed_cases} case(s) without an embedding were scored as failures[/]"
            )
    if run.complaints:
        if len(run.complaints) == 1 and not run.results:
            raise CtfmError(run.complaints[0])
        for err in run.complaints:
            console.print(f"[red]error:[/] {plain(err)}", highlight=False, soft_wrap=True)
        if run.errors:
            console.print(f"[red]{len(run.errors)} of {run.heads} head(s) could not be evaluated[/]")
        if run.problems:
            console.print(f"[red]{len(run.problems)} disease(s) of the runs could not be read[/]")
        raise typer.Exit(1)
    console.print(f"wrote {options.out}", markup=False)


def _interval(low: float, high: float, spec: str) -> str:
    """`` [low, high]``, or nothing when no resample was drawn (``--bootstrap 0`` gives NaN bounds)."""
    if low != low or high != high:
        return ""
    return f" [{low:{spec}}, {high:{spec}}]"


def leaderboard_table(frame: pd.DataFrame, title: str) -> Table:
    """The ranking as a rich table (also printed by ``ctfm run`` / ``ctfm demo``)."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("rank", "model", "mean_rank", "rank 95 % CI", "wins", "agg-then-rank"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for _, r in frame.iterrows():
        table.add_row(
            f"{r['rank']:g}",
            plain(r["model"]),  # names such as 'hu-stats [val_loss]' are not rich markup
            f"{r['mean_rank']:.2f}",
            plain(_interval(r["rank_ci_low"], r["rank_ci_high"], "g").strip() or "-"),
            "-" if r["win_share"] != r["win_share"] else f"{r['win_share']:.1%}",  # NaN: no resamples
            f"{r['rank_aggregate_then_rank']:g}",
        )
    return table


def leaderboard_command(
    results: Path = typer.Option(..., "--results", help="Folder with `ctfm eval` outputs."),
    metrics: list[str] = typer.Option(None, "--metrics", help="Ranking metrics (default: the challenge's)."),
    split: str = typer.Option(None, "--split", help="Split to rank when results hold several."),
    task: str = typer.Option(None, "--task", help="Task to rank (lp or eao) when results hold both."),
    strategy: list[str] = typer.Option(None, "--strategy", help="Only these checkpoint strategies."),
    bootstrap: int = typer.Option(
        default("ranking", "bootstrap"),
        "--bootstrap",
        help="Case resamples per disease for rank stability (0: none).",
        min=0,
    ),
    resampling: str = RESAMPLING_OPTION,
    seed: int = SEED_OPTION,
    title: str = typer.Option("ctfm leaderboard", "--title", help="Page title."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
) -> None:
    """Rank models per disease, aggregate by mean rank, and measure ranking stability by bootstrap."""
    from ctfm.evaluate.stage import LeaderboardOptions, run_leaderboard

    options = LeaderboardOptions(
        results, out, split, task, split_list(strategy) or None, split_list(metrics) or None, bootstrap,
        resampling, seed, title,
    )  # fmt: skip
    lb = run_leaderboard(options)
    _warn_split(lb.split)
    for line in lb.missing_text.splitlines():
        console.print(f"[yellow]warning:[/] {plain(line)}", highlight=False, soft_wrap=True)
    title = (
        f"{title} ({lb.split_note or lb.split}): {len(lb.entries)} model(s) x {len(lb.diseases)} disease(s), "
        f"ranked on {', '.join(lb.metrics)}"
    )
    print_table(leaderboard_table(lb.table(), title), keys=LEADERBOARD_KEYS)
    console.print(f"wrote {', '.join(str(p) for p in lb.files)}", markup=False)
