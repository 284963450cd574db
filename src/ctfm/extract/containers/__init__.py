"""Team containers: the reference runner's contract, run confined, timed and validated.

Modules, one job each: :mod:`.engine` (the client, what the engine enforces, a container's settings),
:mod:`.tarballs` (loading tarballs without touching tags, the reference naming rule), :mod:`.imagefs` (an
image's files, read without running it), :mod:`.scratch` (where a container may write in its own file system,
kernel-capped), :mod:`.folders` (a run's host folders and mounts), :mod:`.outputs` (what a container left in
its output folder), :mod:`.runner` (one container), :mod:`.teams` (a team's cases, whole runs),
:mod:`.check` (``ctfm check-container``), :mod:`.cleanup` (deadlines, watchdog, sweeps) and :mod:`.memory`
(peak memory). Output files are read as untrusted by :mod:`ctfm.store.untrusted`.
"""

from ctfm.extract.containers.check import CheckReport, check_container, temporary_folder
from ctfm.extract.containers.engine import RunSettings, parse_bytes
from ctfm.extract.containers.folders import CaseInput
from ctfm.extract.containers.runner import ContainerRunner
from ctfm.extract.containers.tarballs import TeamImage, discover_tarballs, team_from_tag
from ctfm.extract.containers.teams import (
    ContainerRunOptions,
    TeamReport,
    collect_inputs,
    run_containers,
    run_team,
)

__all__ = [
    "CaseInput",
    "CheckReport",
    "ContainerRunOptions",
    "ContainerRunner",
    "RunSettings",
    "TeamImage",
    "TeamReport",
    "check_container",
    "collect_inputs",
    "discover_tarballs",
    "parse_bytes",
    "run_containers",
    "run_team",
    "team_from_tag",
    "temporary_folder",
]
