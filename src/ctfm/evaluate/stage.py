"""One library call per stage: :func:`run_eval` scores every probe head, :func:`run_leaderboard` ranks the results.

``ctfm eval``, ``ctfm leaderboard`` and ``ctfm run`` all call these, so both write the same files: per head
the :mod:`ctfm.evaluate.results` files, per folder ``<split>_summary.csv``, per board the
:mod:`ctfm.evaluate.report` files.

Example:
    >>> run = run_eval(EvalOptions(Path("probes"), Path("store"), Path("labels"), Path("eval")))  # doctest: +SKIP
    >>> board = run_leaderboard(LeaderboardOptions(Path("eval"), Path("board")))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ctfm.core.benchmark import configured, load_benchmark
from ctfm.core.errors import ConfigError, CtfmError
from ctfm.core.progress import NO_PROGRESS, Progress, tracked
from ctfm.evaluate.bootstrap import SCHEMES
from ctfm.evaluate.checkpoints import HeadRef, find_checkpoints
from ctfm.evaluate.inference import evaluate_checkpoint
from ctfm.evaluate.leaderboard import Leaderboard, build_leaderboard, gather
from ctfm.evaluate.report import write_leaderboard
from ctfm.evaluate.results import EvalResult, drop_stale_results, write_summary

SPLITS = ("val", "test", "train")
PREDICTIONS_STRATEGY = "predictions"  # the strategy of results scored from a predictions file


def known_strategies() -> list[str]:
    """Every checkpoint strategy of both tasks (``configs/benchmark.yaml``), then ``predictions``."""
    bench = load_benchmark()
    configured_ = (s for part in ("linear_probe", "eao") for s in bench.section(part)["strategies"])
    return list(dict.fromkeys([*configured_, PREDICTIONS_STRATEGY]))


def check_strategies(names: Sequence[str] | None, option: str = "--strategy") -> list[str] | None:
    """Known strategy names (None: all): a typo would otherwise select nothing or be ignored beside a valid one."""
    known = known_strategies()
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise ConfigError(f"unknown {option} {', '.join(unknown)}; choose from {', '.join(known)}")
    return list(names) if names else None


def check_resampling(value: str) -> bool:
    """Whether the bootstrap scheme ``value`` is stratified; one clear error for an unknown scheme."""
    if value not in SCHEMES:
        raise ConfigError(f"--resampling must be {' or '.join(SCHEMES)}, not {value!r}")
    return value == "stratified"


@dataclass
class EvalOptions:
    """What scoring the heads of a ``ctfm probe --out`` folder needs (``ctfm eval`` and ``ctfm run``)."""

    runs: Path
    store: Path
    labels: Path
    out: Path
    split: str = field(default_factory=configured("evaluation", "split", str))
    strategies: list[str] | None = None  # None: every strategy the runs saved
    bootstrap: int = field(default_factory=configured("evaluation", "bootstrap", int))
    resampling: str = field(default_factory=configured("evaluation", "resampling", str))
    seed: int = 0
    reference_layout: Path | None = None  # also write the reference scorer's layout here
    diseases: list[str] | None = None  # None: every disease of the runs
    model: str | None = None  # one model folder of the runs; None: all

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"--split must be {', '.join(SPLITS[:-1])} or {SPLITS[-1]}, not {self.split!r}")
        if self.bootstrap < 0:
            raise ConfigError(f"--bootstrap must be at least 0, not {self.bootstrap}")
        check_resampling(self.resampling)
        self.strategies = check_strategies(self.strategies)


@dataclass
class EvalRun:
    """What :func:`run_eval` did: the scored heads, and one line per head or disease that could not be scored."""

    results: list[EvalResult]
    heads: int  # heads attempted
    errors: list[str] = field(default_factory=list)  # heads that could not be scored
    problems: list[str] = field(default_factory=list)  # diseases whose heads could not be listed
    removed: list[Path] = field(default_factory=list)  # earlier results of heads the runs no longer hold
    summary: Path | None = None

    @property
    def failed_cases(self) -> int:
        """Cases scored as failures (no embedding) over every head."""
        return sum(r.failed_cases for r in self.results)

    @property
    def complaints(self) -> list[str]:
        return self.problems + self.errors


def run_eval(options: EvalOptions, progress: Progress = NO_PROGRESS) -> EvalRun:
    """Score every head of the runs on ``options.split`` and write every file; a head that fails is recorded
    and the others are still scored. ``progress`` advances once per head."""
    found = find_checkpoints(options.runs, options.strategies, options.diseases, options.model)
    heads = found.only(options.strategies)
    run = EvalRun([], len(heads), problems=list(found.problems))
    stratified = check_resampling(options.resampling)
    with tracked(progress, f"eval {options.split}", len(heads)) as advance:
        for ref in heads:
            _score_head(options, ref, stratified, run)
            advance()
    if run.results:
        run.removed = drop_stale_results(options.out, options.split, run.results, found)
        run.summary = write_summary(options.out, options.split)
    return run


def _score_head(options: EvalOptions, ref: HeadRef, stratified: bool, run: EvalRun) -> None:
    """One head of :func:`run_eval`: its result, or its error recorded (the others are still scored)."""
    try:
        run.results.append(
            evaluate_checkpoint(
                ref.path,
                options.store,
                options.labels,
                options.split,
                options.out,
                options.bootstrap,
                options.seed,
                ref.tag,
                ref.split_column,
                stratified,
                options.reference_layout,
            )
        )
    except CtfmError as exc:
        run.errors.append(str(exc))


@dataclass
class LeaderboardOptions:
    """What ranking the results of ``ctfm eval`` needs (``ctfm leaderboard`` and ``ctfm run``)."""

    results: Path
    out: Path
    split: str | None = None  # needed when the results hold several
    task: str | None = None  # lp or eao, needed when the results hold both
    strategies: list[str] | None = None
    metrics: list[str] | None = None  # None: the challenge's ranking metrics
    bootstrap: int = field(default_factory=configured("ranking", "bootstrap", int))
    resampling: str = field(default_factory=configured("evaluation", "resampling", str))
    seed: int = 0
    title: str = "ctfm leaderboard"

    def __post_init__(self) -> None:
        if self.bootstrap < 0:
            raise ConfigError(f"--bootstrap must be at least 0, not {self.bootstrap}")
        check_resampling(self.resampling)
        self.strategies = check_strategies(self.strategies)


def run_leaderboard(options: LeaderboardOptions) -> Leaderboard:
    """Rank the models of ``options.results`` and write the board's files (:attr:`Leaderboard.files`)."""
    data, entries = gather(options.results, options.split, options.strategies, options.task)
    board = build_leaderboard(
        data,
        entries,
        options.metrics or None,
        n_boot=options.bootstrap,
        seed=options.seed,
        stratified=check_resampling(options.resampling),
    )
    board.files = write_leaderboard(board, options.out, options.title)
    return board
