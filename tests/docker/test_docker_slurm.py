"""Team containers through the slurm executor: each array task loads the team's tarball into the node's
engine and runs the same runner, command and limits as a local run, so the store ends up what a local run
stores, and sacct lists the tasks."""

from __future__ import annotations

import os

import numpy as np
import pytest
from docker_support import write_cases

from ctfm.executor.jobs import jobs_root, list_jobs
from ctfm.store import Store
from slurm_support import completed_tasks, require_slurm

pytestmark = [pytest.mark.docker, pytest.mark.slurm]


def test_team_tarball_on_slurm_stores_what_a_local_run_stores(baseline, tmp_path, cli):
    require_slurm()
    images = write_cases(tmp_path / "images", 4)
    teams = tmp_path / "submissions"
    teams.mkdir()
    os.link(baseline["lp"], teams / "baseline_lp.tar.gz")
    common = ("extract", "--containers", teams, "--images", images, "--task", "lp", "--memory", "2g")
    cli(*common, "--store", tmp_path / "local")
    proc = cli(
        *common, "--store", tmp_path / "slurm", "--executor", "slurm",
        "--slurm", "cases_per_task=2", "--slurm", "poll_s=0.5",
    )  # fmt: skip
    assert "submitted Slurm job" in proc.stdout, proc.stdout

    local, slurm = Store(tmp_path / "local"), Store(tmp_path / "slurm")
    (view,) = local.views()
    other = slurm.view(view.model, view.task, view.view)
    assert view.cases() == other.cases() == [f"case_{i:04d}" for i in range(4)]
    assert view.manifest_checksum() == other.manifest_checksum()
    for case in view.cases():
        np.testing.assert_array_equal(view.read_case(case), other.read_case(case))

    job_id = list_jobs(jobs_root(tmp_path / "slurm"))[-1].slurm_id
    assert completed_tasks(job_id, 2) == [f"{job_id}_{i}|COMPLETED" for i in range(2)]
