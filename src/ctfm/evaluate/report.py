"""The leaderboard's files (csv, md, json, pairwise) and its self-contained page: every figure is an inline
base64 PNG, no script, font or style is fetched, so the file opens offline and can be mailed as is."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ctfm.core.fsutil import write_text_atomic
from ctfm.evaluate.curves import pyplot
from ctfm.evaluate.leaderboard import Leaderboard
from ctfm.evaluate.splits import split_warning

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def png_base64(fig: Figure) -> str:
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def rank_heatmap(lb: Leaderboard) -> Figure:
    """Models (best first) x diseases: mean rank over the ranking metrics per disease."""
    plt = pyplot()
    order = np.argsort(lb.final_rank, kind="stable")
    per_disease = lb.ranks.mean(axis=1)[:, order].T  # [M, D]
    fig, ax = plt.subplots(
        figsize=(max(4.5, 2.5 + 0.55 * len(lb.diseases)), max(3.0, 1.6 + 0.35 * len(lb.entries)))
    )
    im = ax.imshow(per_disease, cmap="viridis_r", aspect="auto", vmin=1, vmax=max(len(lb.entries), 2))
    ax.set_xticks(range(len(lb.diseases)), lb.diseases, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(order)), [lb.entries[i] for i in order], fontsize=8)
    if per_disease.size <= 400:
        for (r, c), v in np.ndenumerate(per_disease):
            ax.text(
                c,
                r,
                f"{v:g}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if v <= (len(lb.entries) + 1) / 2 else "white",
            )
    fig.colorbar(im, ax=ax, label="rank (1 = best)")
    ax.set_title(f"Rank per disease (mean over {', '.join(lb.metrics)})", fontsize=9)
    fig.tight_layout()
    return fig


def rank_distributions(lb: Leaderboard) -> Figure:
    """Per model, how often each final rank occurs over the bootstrap resamples."""
    plt = pyplot()
    order = np.argsort(lb.final_rank, kind="stable")
    m = len(lb.entries)
    fig, ax = plt.subplots(figsize=(max(5.0, 2.5 + 0.4 * m), max(3.0, 1.6 + 0.35 * m)))
    edges = np.arange(0.75, m + 0.76, 0.5)
    share = np.stack([np.histogram(lb.boot_ranks[:, i], bins=edges)[0] for i in order]) / max(lb.n_boot, 1)
    im = ax.imshow(
        share, cmap="Blues", aspect="auto", vmin=0, vmax=1, extent=(edges[0], edges[-1], m - 0.5, -0.5)
    )
    ax.scatter(lb.final_rank[order], range(m), marker="x", color="red", s=18, label="full-data rank")
    ax.set_yticks(range(m), [lb.entries[i] for i in order], fontsize=8)
    ax.set_xlabel("final rank in a bootstrap resample")
    ax.set_title(f"Bootstrap rank distribution ({lb.n_boot} resamples)", fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=7, frameon=False)
    fig.colorbar(im, ax=ax, label="share of resamples")
    fig.tight_layout()
    return fig


def metric_ci_bars(lb: Leaderboard, k: int) -> Figure:
    """One panel per disease: each model's metric with its bootstrap 95 % interval."""
    plt = pyplot()
    metric = lb.metrics[k]
    d = len(lb.diseases)
    cols = min(d, 4)
    rows = int(np.ceil(d / cols))
    m = len(lb.entries)
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(5.0, 3.2 * cols), 0.8 + (0.22 * m + 1.0) * rows), squeeze=False, sharey=True
    )
    y = np.arange(m)
    for i, ax in enumerate(axes.ravel()):
        if i >= d:
            ax.axis("off")
            continue
        v, lo, hi = lb.values[i, k], lb.ci_low[i, k], lb.ci_high[i, k]
        err = np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])
        err = np.where(np.isnan(err), 0.0, err)
        ax.errorbar(v, y, xerr=err, fmt="o", ms=3, capsize=2, lw=1)
        ax.set_title(lb.diseases[i], fontsize=8)
        ax.set_yticks(y, lb.entries, fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    axes.ravel()[0].invert_yaxis()  # shared y: best-listed model on top in every panel
    fig.suptitle(f"{metric} with bootstrap 95 % interval", fontsize=9)
    fig.tight_layout()
    return fig


def _table(frame, float_fmt: str = "{:.3f}") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for v in row:
            if isinstance(v, float | np.floating):
                text = f"{v:g}" if float(v).is_integer() else float_fmt.format(v)
            else:
                text = str(v)
            cells.append(f"<td>{html.escape(text)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:nth-child(2){text-align:left}
img{max-width:100%;display:block;margin:1em 0}
.note{color:#555;font-size:13px;max-width:60em}
.warning{color:#9a3412;font-size:13px;max-width:60em;font-weight:600}
"""


def _stability_text(taus: np.ndarray) -> str:
    """Kendall's tau-b of the resampled rankings against the full-data one, and why some are left out."""
    if not taus.size:
        return "No bootstrap: stability not measured."
    tau = taus[~np.isnan(taus)]
    undefined = taus.size - tau.size
    why = f"{undefined} of {taus.size} resamples have no tau: every model tied there or in the full data"
    if not tau.size:
        return f"Kendall's tau-b not defined: {why}."
    return (
        f"Kendall's tau-b between the full-data ranking and the resampled ones: median {np.median(tau):.3f}, "
        f"95 % interval [{np.percentile(tau, 2.5):.3f}, {np.percentile(tau, 97.5):.3f}] over {tau.size} resamples"
        + (f" ({why})." if undefined else ".")
    )


def leaderboard_html(lb: Leaderboard, title: str = "ctfm leaderboard") -> str:
    """One self-contained page: tables and base64 PNG figures, nothing loaded from the network."""
    main = lb.table()[
        ["rank", "model", "mean_rank", "rank_ci_low", "rank_ci_high", "win_share", "rank_aggregate_then_rank"]
        + [f"mean_{m}" for m in lb.metrics]
    ]
    beats = lb.beats_table().reset_index().rename(columns={"index": "A beats → B"})
    tau_text = _stability_text(lb.tau)
    figures = [("Rank heatmap", rank_heatmap(lb))]
    if lb.n_boot:
        figures.append(("Bootstrap rank distributions", rank_distributions(lb)))
    figures += [
        (f"Per-disease {metric} with 95 % CI", metric_ci_bars(lb, k)) for k, metric in enumerate(lb.metrics)
    ]
    imgs = "".join(
        f'<h2>{html.escape(name)}</h2><img class="figure" alt="{html.escape(name)}" '
        f'src="data:image/png;base64,{png_base64(fig)}">'
        for name, fig in figures
    )
    note = (
        f"Per disease, models are ranked on {', '.join(lb.metrics)} (ties share their average rank; a missing "
        "result ranks last); the final rank orders the mean rank over diseases and metrics. "
        "rank_aggregate_then_rank averages each metric over diseases first. Rank intervals, win shares and "
        f"pairwise shares come from {lb.n_boot} case resamples per disease ({lb.resampling}"
        f"{' within each class' if lb.resampling == 'stratified' else ''}, seed {lb.seed})."
    )
    lines = ([split_warning(lb.split)] if lb.split_note else []) + lb.missing_text.splitlines()
    warnings = "".join(f"<p class='warning'>{html.escape(line)}</p>" for line in lines)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='note'>{html.escape(note)}</p>{warnings}"
        f"<h2>Leaderboard</h2><div id='leaderboard'>{_table(main)}</div>"
        f"<p class='note'>{html.escape(tau_text)}</p>{imgs}"
        f"<h2>Pairwise: share of resamples in which the row model beats the column model</h2>"
        f"<div id='pairwise'>{_table(beats, '{:.2f}')}</div></body></html>\n"
    )


# ---------------------------------------------------------------------------------------------- writing


def to_markdown(frame: pd.DataFrame) -> str:
    """A plain GitHub-style markdown table (no optional dependency)."""
    cols = [str(c) for c in frame.columns]

    def cell(v: object) -> str:
        if isinstance(v, float | np.floating):
            return f"{v:g}" if float(v).is_integer() else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_leaderboard(lb: Leaderboard, out: Path, title: str = "ctfm leaderboard") -> list[Path]:
    """leaderboard.csv (every column), leaderboard.md, pairwise.csv, leaderboard.json and leaderboard.html."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = lb.table()
    paths = {
        "csv": out / "leaderboard.csv",
        "md": out / "leaderboard.md",
        "pairwise": out / "pairwise.csv",
        "json": out / "leaderboard.json",
        "html": out / "leaderboard.html",
    }
    write_text_atomic(paths["csv"], table.to_csv(index=False))
    short = table[
        ["rank", "model", "mean_rank", "rank_ci_low", "rank_ci_high", "win_share", "rank_aggregate_then_rank"]
        + [f"mean_{m}" for m in lb.metrics]
    ]
    tau = lb.tau[~np.isnan(lb.tau)] if lb.tau.size else lb.tau
    md = f"# {title}\n\n"
    if lb.split_note:
        md += f"**Warning:** {split_warning(lb.split)}\n\n"
    md += f"{to_markdown(short)}\n"
    if tau.size:
        md += f"Kendall's tau-b (full vs resampled ranking): median {np.median(tau):.3f} over {tau.size} resamples.\n"
    if lb.missing:
        md += "".join(f"\n**Warning:** {line}\n" for line in lb.missing_text.splitlines())
    write_text_atomic(paths["md"], md)
    write_text_atomic(paths["pairwise"], lb.beats_table().to_csv())
    summary = {
        "entries": lb.entries,
        "diseases": lb.diseases,
        "metrics": lb.metrics,
        "split": lb.split,
        "split_note": lb.split_note,
        "n_boot": lb.n_boot,
        "resampling": lb.resampling,
        "seed": lb.seed,
        "missing": lb.missing,
        "table": json.loads(table.to_json(orient="records")),
        "kendall_tau_median": float(np.median(tau)) if tau.size else None,
        "degenerate_resamples": {
            d: dict(zip(lb.metrics, map(int, row), strict=True))
            for d, row in zip(lb.diseases, lb.degenerate, strict=True)
        },
    }
    write_text_atomic(paths["json"], json.dumps(summary, indent=2) + "\n")
    write_text_atomic(paths["html"], leaderboard_html(lb, title))
    return list(paths.values())
