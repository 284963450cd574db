"""One library call for the probe stage: :func:`run_probe` trains ``options.task``'s probe on every disease.

``ctfm probe lp|eao``, ``ctfm run`` and the Slurm array tasks (:mod:`ctfm.executor.probe`) all call it, so a
probe trained by any of them is trained alike.

Example:
    >>> options = ProbeOptions.defaults("lp", store=Path("store"), model="m", labels=Path("labels"),
    ...                                 out=Path("probes"), diseases=["fatty_liver"])  # doctest: +SKIP
    >>> result = run_probe(options)  # doctest: +SKIP
    >>> result.failed  # doctest: +SKIP
    []
"""

from __future__ import annotations

from dataclasses import dataclass

from ctfm.core.progress import NO_PROGRESS, Progress
from ctfm.probe.options import ProbeOptions
from ctfm.probe.runner import DiseaseOutcome, OnRun, ProbeTask, probe_diseases


@dataclass
class ProbeResult:
    """What one probe stage did: each disease's outcome, in the order of ``options.diseases``."""

    options: ProbeOptions
    outcomes: list[DiseaseOutcome]

    @property
    def failed(self) -> list[DiseaseOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def trained(self) -> int:
        """Diseases trained now or already finished (skipped)."""
        return sum(o.status in ("done", "skipped") for o in self.outcomes)


def probe_task(options: ProbeOptions, progress: Progress = NO_PROGRESS) -> ProbeTask:
    """The task ``options.task`` names: the linear grid (lp) or the token heads (eao, ``progress``: a bar
    over epochs)."""
    if options.task == "lp":
        from ctfm.probe.lp_task import linear_task

        return linear_task(options)
    from ctfm.probe.eao import eao_task

    return eao_task(options, progress=progress)


def run_probe(
    options: ProbeOptions,
    on_run: OnRun | None = None,
    stop_on_error: bool = False,
    progress: Progress = NO_PROGRESS,
) -> ProbeResult:
    """Train every disease of ``options`` (resumably; a failed disease is recorded and the next one runs
    unless ``stop_on_error``). ``on_run(disease, tag)`` follows each planned run."""
    task = probe_task(options, progress)
    return ProbeResult(options, probe_diseases(options, task, stop_on_error=stop_on_error, on_run=on_run))
