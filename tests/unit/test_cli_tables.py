"""Console tables stay readable: piped output is one plain line per row, a narrow terminal cuts no number."""

from __future__ import annotations

import io

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from ctfm.cli import print_table
from ctfm.cli.evaluate import METRIC_KEYS, metrics_table
from ctfm.core.metrics import METRICS

BOX = set("│┃━─┏┓┗┛┡┩└┘╇┳┻┼")


def _head(model: str, disease: str, value: float) -> dict:
    """One ``EvalResult.row()``-like dict: every metric ``value`` with a CI around it."""
    row = {"model": model, "disease": disease, "strategy": "val_auroc", "tag": "", "n_missing_failed": 2}
    row["n_real"] = 22
    for m in METRICS:
        row |= {m: value, f"{m}_ci_low": value - 0.111, f"{m}_ci_high": value + 0.093}
    return row


HEADS = [_head("merlin-[val_loss]", "liver_cyst", 0.812), _head("hu-stats", "ascites", 0.504)]


def _cell(row: dict, metric: str) -> str:
    return f"{row[metric]:.3f} [{row[metric + '_ci_low']:.3f}, {row[metric + '_ci_high']:.3f}]"


def _printed(console_options: dict) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, color_system=None, **console_options)
    print_table(metrics_table(HEADS, "val: 2 head(s)"), console, keys=METRIC_KEYS)
    return out.getvalue().splitlines()


def test_piped_table_is_one_plain_line_per_row() -> None:
    lines = _printed({"width": 60})  # a file is no terminal: its width must not matter
    assert lines[0] == "val: 2 head(s)"
    assert lines[1].split() == ["model", "disease", "strategy", "failed", *METRICS]
    for head in HEADS:
        (line,) = [line for line in lines if line.startswith(head["model"])]
        assert line.split()[:4] == [head["model"], head["disease"], "val_auroc", "2/24"]
        assert all(_cell(head, m) in line for m in METRICS), line
    assert len(lines) == 2 + len(HEADS)
    assert not BOX & set("".join(lines)) and "…" not in "".join(lines)
    assert all(line == line.rstrip() for line in lines)
    assert lines[1].index("failed") + len("failed") == lines[2].index("2/24") + len("2/24")  # right-justified


@pytest.mark.parametrize("width", [50, 60, 80, 120])
def test_narrow_terminal_splits_columns_and_cuts_no_number(width: int) -> None:
    """Parts repeat the names beside the values; names too long for that fold inside their cell."""
    lines = _printed({"width": width, "force_terminal": True})
    assert max(cell_len(line) for line in lines) <= width
    text = "\n".join(lines)
    assert "…" not in text
    for name in ("model", "disease", "strategy", "failed", *METRICS):
        assert f" {name} " in text, name  # every header whole
    for m in METRICS:
        assert all(any(_cell(head, m) in line for line in lines) for head in HEADS), (m, text)
    names = "".join(line.split("│")[1].strip() for line in lines if line.startswith("│"))
    assert names.count(HEADS[0]["model"]) == names.count(HEADS[1]["model"]) > 0


def test_table_that_fits_the_terminal_is_printed_as_rich_prints_it() -> None:
    table = metrics_table(HEADS, "val: 2 head(s)")
    ours, plain_rich = io.StringIO(), io.StringIO()
    print_table(table, Console(file=ours, width=400, force_terminal=True), keys=METRIC_KEYS)
    Console(file=plain_rich, width=400, force_terminal=True).print(table)
    assert ours.getvalue() == plain_rich.getvalue()


def test_free_text_column_too_wide_for_the_terminal_stays_beside_its_keys() -> None:
    """A message wider than the terminal is folded as before, never moved away from its file and case."""
    table = Table(title="1 problem(s)")
    for column in ("file", "case", "problem"):
        table.add_column(column, overflow="fold")
    message = " ".join(f"word{i}" for i in range(30))
    table.add_row("labels/ascites.csv", "case_0001", message)
    out = io.StringIO()
    print_table(table, Console(file=out, width=60, force_terminal=True, color_system=None), keys=2)
    lines = out.getvalue().splitlines()
    assert max(cell_len(line) for line in lines) <= 60
    assert sum(line.startswith("┏") for line in lines) == 1  # one table
    assert "".join(line.split("│")[3] for line in lines if line.count("│") == 4).split() == message.split()
