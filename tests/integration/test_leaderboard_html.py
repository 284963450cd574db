"""The leaderboard page renders in a real headless browser (Debian's chromium): table, figures, no errors.

Skipped when chromium is absent, except under CI=true, where a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ctfm.evaluate.leaderboard import DiseaseScores, build_leaderboard
from ctfm.evaluate.report import write_leaderboard

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
BROWSERS = ("chromium", "chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# Appended to a copy of the page: after load, report how many images decoded and any script error.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const rows = document.querySelectorAll('#leaderboard tbody tr').length;
  const p = document.createElement('pre'); p.id = 'probe';
  p.textContent = `PROBE images=${imgs.length} decoded=${ok} rows=${rows} errors=${window.__errors.length}`;
  document.body.appendChild(p);
});
</script>"""


def _browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


@pytest.fixture
def browser() -> str:
    found = _browser()
    if found is None:
        if IN_CI:
            pytest.fail("CI=true but chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium not installed")
    return found


def _page(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    data = []
    for d in range(3):
        y = rng.integers(0, 2, 40)
        skill = np.array([1.5, 1.0, 0.5, 0.1])[:, None]
        p = 1 / (1 + np.exp(-(skill * (2 * y - 1) + rng.normal(size=(4, 40)))))
        data.append(DiseaseScores(f"disease_{d}", [str(i) for i in range(40)], y, np.stack([1 - p, p], -1)))
    lb = build_leaderboard(
        data, ["alpha", "beta", "gamma", "delta"], ["balanced_acc", "auroc"], n_boot=100, seed=0
    )
    write_leaderboard(lb, tmp_path / "lb")
    return tmp_path / "lb" / "leaderboard.html"


def _run(browser: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    return subprocess.run(
        [browser, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_leaderboard_html_renders_in_chromium(browser: str, tmp_path: Path) -> None:
    page = _page(tmp_path)
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the page must not load anything remote"
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    proc = _run(browser, tmp_path, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r"PROBE images=(\d+) decoded=(\d+) rows=(\d+) errors=(\d+)", proc.stdout)
    assert match, proc.stdout[-2000:]
    images, decoded, rows, errors = map(int, match.groups())
    assert images == 4 and decoded == images  # heatmap, rank distributions, one CI figure per metric
    assert rows == 4 and errors == 0
    assert "alpha" in proc.stdout and "disease" in proc.stdout
    shot = tmp_path / "shot.png"
    proc = _run(browser, tmp_path, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri())
    assert proc.returncode == 0 and shot.stat().st_size > 20_000, proc.stderr[-2000:]
    keep = os.environ.get("CTFM_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
