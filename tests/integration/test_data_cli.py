"""The real `ctfm data` commands in a subprocess: synth -> check, damage -> check fails, download offline."""

from __future__ import annotations

import json
import shutil

from data_fixtures import FILES, UNREACHABLE_HUB, build_offline_cache


def test_synth_then_check_passes(cli, tmp_path):
    out = tmp_path / "bench"
    proc = cli("data", "synth", "--out", out, "--cases", "6", "--seed", "3", "--workers", "2")
    assert "wrote 6 demo cases" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arguments"]["seed"] == 3 and len(manifest["cases"]) == 6
    assert len(list((out / "images").glob("*.nii.gz"))) == 6
    proc = cli("data", "check", out)
    assert "OK" in proc.stdout and "6 label maps" in proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1  # piped, the output is the result: no progress bar
    assert "━" not in proc.stdout + proc.stderr
    shutil.copy2(out / "images" / "synth_0001.nii.gz", out / "images" / "._synth_0001.nii.gz")
    proc = cli("data", "check", out)
    assert proc.stdout.splitlines()[0] == (
        "note: 1 hidden file(s) named like volumes are skipped by every stage: images/._synth_0001.nii.gz"
    )
    assert "OK" in proc.stdout and "7 images" in proc.stdout  # 6 cases and 1 test_demo case


def test_check_on_damaged_copy_prints_every_problem_and_exits_1(cli, synth_bench, tmp_path):
    bench = shutil.copytree(synth_bench, tmp_path / "bench")
    (bench / "images" / "synth_0003.nii.gz").unlink()
    img = bench / "images" / "synth_0004.nii.gz"
    img.write_bytes(img.read_bytes()[:1000])
    proc = cli("data", "check", bench, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "synth_0003" in proc.stdout and "listed case has no image" in proc.stdout
    assert "synth_0004" in proc.stdout and "truncated" in proc.stdout
    assert (
        proc.stdout.count("listed case has no image") == 15
    )  # every label file lists it: every problem shown


def test_check_of_missing_folder_is_one_red_line(cli, tmp_path):
    proc = cli("data", "check", tmp_path / "nope", check=False)
    assert proc.returncode == 2
    assert "not a folder" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_paths_with_brackets_print_verbatim_and_never_crash_the_output(cli, tmp_path, monkeypatch):
    """rich reads `[...]` as markup: a path like `b[/x]` once crashed the command after its work was done."""
    monkeypatch.setenv("COLUMNS", "250")
    out = tmp_path / "b[/x] [red]"
    proc = cli("data", "synth", "--out", out, "--cases", "2")
    assert f"to {out} in" in proc.stdout
    (out / "images" / "synth_0001.nii.gz").unlink()
    proc = cli("data", "check", out, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "b[/x] [red]" in proc.stdout and "listed case has no image" in proc.stdout
    proc = cli("data", "check", tmp_path / "gone[/y]", check=False)
    assert proc.returncode == 2 and f"{tmp_path / 'gone[/y]'}: not a folder" in proc.stderr


def test_an_output_path_that_is_a_file_is_one_red_line(cli, tmp_path):
    (tmp_path / "afile").write_text("mine")
    proc = cli("data", "synth", "--out", tmp_path / "afile", "--cases", "1", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'afile'}: Not a directory"]
    assert (tmp_path / "afile").read_text() == "mine"


def test_download_from_offline_cache(cli, tmp_path, monkeypatch):
    cache = build_offline_cache(tmp_path / "cache")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    proc = cli("data", "download", "--dest", tmp_path / "dest")
    assert "2 file(s)" in proc.stdout
    got = tmp_path / "dest" / "AMOS-clf-tr-val" / "labels" / "gallstone.csv"
    assert got.read_bytes() == FILES["AMOS-clf-tr-val/labels/gallstone.csv"]


def test_download_with_unreachable_hub_is_one_line(cli, tmp_path, monkeypatch):
    # The real hub cannot be reached from the test machine, so it is replaced by a closed local port.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE_HUB)
    proc = cli("data", "download", "--dest", tmp_path / "dest", check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach the Hugging Face Hub" in lines[0], proc.stderr
