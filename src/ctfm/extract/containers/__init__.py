"""Team containers: the reference runner's contract, run confined, timed and validated.

Modules, one job each: :mod:`.engine` (the client, what the engine enforces, a container's settings),
:mod:`.tarballs` (loading tarballs without touching tags, the reference naming rule), :mod:`.folders` (a run's
host folders, size-capped), :mod:`.outputs` (checking what a container wrote, bounded), :mod:`.runner`
(containers, teams, whole runs), :mod:`.check` (``ctfm check-container``), :mod:`.cleanup` (deadlines,
watchdog, sweeps) and :mod:`.memory` (peak memory).
"""

from ctfm.extract.containers.check import CheckReport, check_container, temporary_folder
from ctfm.extract.containers.engine import RunSettings, parse_bytes
from ctfm.extract.containers.folders import CaseInput
from ctfm.extract.containers.runner import (
    ContainerRunner,
    TeamReport,
    collect_inputs,
    run_containers,
    team_table,
)
from ctfm.extract.containers.tarballs import TeamImage, discover_tarballs, team_from_tag

__all__ = [
    "CaseInput",
    "CheckReport",
    "ContainerRunner",
    "RunSettings",
    "TeamImage",
    "TeamReport",
    "check_container",
    "collect_inputs",
    "discover_tarballs",
    "parse_bytes",
    "run_containers",
    "team_from_tag",
    "team_table",
    "temporary_folder",
]
