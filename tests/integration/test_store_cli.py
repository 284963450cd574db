"""``ctfm store import`` with a reference timing CSV and ``ctfm store export`` into the reference layout,
through the real CLI."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd


def test_import_then_export_through_the_cli(cli, tmp_path: Path) -> None:
    outputs = tmp_path / "acme_lp" / "embeddings"  # where the reference runner leaves a team's outputs
    outputs.mkdir(parents=True)
    for i in range(3):
        with h5py.File(outputs / f"case_{i}.h5", "w") as fh:
            fh.create_dataset("y_hat", data=np.full(8, i, np.float32))
    (outputs / "case_3.h5").write_bytes(b"broken")
    rows = {"CaseName": [f"case_{i}.nii.gz" for i in range(4)], "RunningTime": [1.5, 0.8, 1.1, 2.0]}
    pd.DataFrame(rows).to_csv(outputs / "acme_lp_feature_extraction_time.csv", index=False)
    store = tmp_path / "store"
    proc = cli("store", "import", outputs, "--store", store, "--model", "acme", "--task", "lp", check=False)
    assert proc.returncode == 1 and "imported 3 case(s)" in proc.stdout and "1 failed" in proc.stdout
    assert "seconds from" in proc.stdout and "acme_lp_feature_extraction_time.csv" in proc.stdout

    out = tmp_path / "export"
    proc = cli(
        "store", "export", out, "--store", store, "--model", "acme", "--task", "lp", "--disease", "ascites"
    )
    assert "ascites" in proc.stdout and "1 failed (case_3)" in proc.stdout
    assert f"run_LP.py --embeds_root {out}" in proc.stdout
    folder = out / "ascites" / "embeddings"
    assert sorted(p.name for p in folder.iterdir()) == [
        "acme_lp_feature_extraction_time.csv",
        "case_0.h5",
        "case_1.h5",
        "case_2.h5",
    ]
    assert os.path.samefile(folder / "case_1.h5", store / "acme" / "lp" / "full" / "embeddings" / "case_1.h5")
    timing = pd.read_csv(folder / "acme_lp_feature_extraction_time.csv")
    assert timing["RunningTime"].tolist() == [1.5, 0.8, 1.1, 2.0]
    (folder / "case_0.h5").unlink()
    (out / "lymphadenopathy" / "embeddings").mkdir(parents=True)
    (out / "lymphadenopathy" / "embeddings" / "case_0.h5").write_text("mine")
    proc = cli("store", "export", out, "--store", store, "--model", "acme", "--task", "lp", check=False)
    assert proc.returncode == 2 and "lymphadenopathy/embeddings/case_0.h5 already exist" in proc.stderr
    assert not (folder / "case_0.h5").exists()  # refused before changing anything
