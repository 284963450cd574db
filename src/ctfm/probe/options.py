"""The options of one probe stage (:class:`ProbeOptions`), checked when made, and the runs they plan.

Example:
    >>> options = ProbeOptions.defaults("eao", store=Path("store"), model="m", labels=Path("labels"),
    ...                                 out=Path("probes"), diseases=["fatty_liver"])  # doctest: +SKIP
    >>> [s.name for s in options.heads]  # doctest: +SKIP
    ['attn-pool']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ctfm.core.benchmark import load_benchmark
from ctfm.core.errors import ConfigError
from ctfm.probe.data import fold_columns
from ctfm.probe.eao_grid import HeadSpec, eao_head_specs
from ctfm.probe.training import TrainConfig
from ctfm.store import PACK_DTYPES


@dataclass(frozen=True)
class RunSpec:
    """One training run of a disease: which split column, seed and few-shot draw."""

    tag: str
    seed: int
    split_column: str
    shots: int = 0
    try_index: int = 0


def plan_runs(split_column: str, folds: int, seeds: list[int], shots: int, tries: int) -> list[RunSpec]:
    """Every (split column, seed, try); tags name only the axes that vary (``""`` for a single run)."""
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(
            f"--seeds lists {', '.join(map(str, repeated))} more than once (each run needs its own)"
        )
    columns = fold_columns(folds) if folds else [split_column]
    draws = list(range(tries)) if shots else [0]
    runs = []
    for column in columns:
        for seed in seeds:
            for t in draws:
                parts = []
                if folds:
                    parts.append(column)
                if len(seeds) > 1:
                    parts.append(f"seed{seed}")
                if shots:
                    parts.append(f"shots{shots}-try{t}")
                runs.append(RunSpec("_".join(parts), seed, column, shots, t))
    return runs


SECTIONS = {"lp": "linear_probe", "eao": "eao"}  # task -> its section of configs/benchmark.yaml


@dataclass
class ProbeOptions:
    """Everything one probe stage needs: ``ctfm probe lp|eao``, ``ctfm run`` and tests fill it (best through
    :meth:`defaults`); ``task`` says which probe trains, the EAO fields are task 2's own."""

    store: Path
    model: str
    labels: Path
    out: Path
    diseases: list[str]
    train: TrainConfig
    task: Literal["lp", "eao"] = "lp"
    probe: str = "grid"  # lp: grid or logreg; eao: the heads' names joined by +
    lrs: list[float] = field(default_factory=list)
    weight_decays: list[float] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    betas: list[tuple[float, float]] = field(default_factory=lambda: [(0.9, 0.999)])
    eps: list[float] = field(default_factory=lambda: [1e-8])
    split_column: str = "split"
    folds: int = 0
    seeds: list[int] = field(default_factory=list)
    shots: int = 0
    tries: int = 1
    force: bool = False
    retrain_changed: bool = False  # a finished disease trained with other options is retrained, not refused
    wandb: bool = False
    wandb_project: str = "ctfm"
    logreg_cs: list[float] = field(default_factory=list)
    heads: list[HeadSpec] = field(default_factory=list)  # eao: the token heads trained together
    dtype: str = "float32"  # eao: the packed token cache's dtype
    eval_batch_size: int | None = None  # eao: validation batch (None: sized by tokens)
    cuda_graphs: bool = True  # eao: replay training steps as CUDA graphs where possible

    def __post_init__(self) -> None:
        check_grid_values(self.lrs, self.weight_decays, self.eps, self.betas, self.logreg_cs)
        if self.task not in SECTIONS:
            raise ConfigError(f"probe task {self.task!r} is not one of {', '.join(SECTIONS)}")
        if self.task == "lp" and self.probe not in LP_PROBES:
            raise ConfigError(f"--probe {self.probe!r} is not one of {', '.join(LP_PROBES)}")
        if self.task == "eao":
            _check_eao(self)

    @classmethod
    def defaults(cls, task: str = "lp", **kwargs: Any) -> ProbeOptions:
        """Grid axes, training rules and (eao) heads from ``configs/benchmark.yaml`` unless given (None =
        default)."""
        section = SECTIONS.get(task)
        if section is None:
            raise ConfigError(f"probe task {task!r} is not one of {', '.join(SECTIONS)}")
        conf = load_benchmark().section(section)
        train = kwargs.pop("train", None) or TrainConfig.from_benchmark(section)
        given = {k: v for k, v in kwargs.items() if v is not None}
        given.setdefault("lrs", list(conf.get("lrs", [])))
        given.setdefault("weight_decays", list(conf.get("weight_decays", [])))
        given.setdefault("norms", list(conf.get("norms", ["raw"])))
        if task == "eao":
            given["heads"] = given.get("heads") or eao_head_specs()
            given.setdefault("probe", "+".join(s.name for s in given["heads"]))
        return cls(train=train, task=task, **given)

    def run_specs(self) -> list[RunSpec]:
        seeds = self.seeds or [self.train.seed]
        return plan_runs(self.split_column, self.folds, seeds, self.shots, self.tries)

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of the options (for summary.json and wandb); the EAO fields are recorded as the
        task's settings (:class:`ProbeTask`)."""
        d = {k: v for k, v in asdict(self).items() if k not in _TASK_FIELDS}
        d.update({k: str(v) for k, v in d.items() if isinstance(v, Path)})
        d["train"] = asdict(self.train)
        return d


LP_PROBES = ("grid", "logreg")
_TASK_FIELDS = {"task", "heads", "dtype", "eval_batch_size", "cuda_graphs"}


def _check_eao(options: ProbeOptions) -> None:
    """Task 2's own settings, checked before any disease is touched."""
    if options.dtype not in PACK_DTYPES:
        raise ConfigError(f"--dtype {options.dtype!r} is not one of {', '.join(PACK_DTYPES)}")
    if options.eval_batch_size is not None and options.eval_batch_size < 1:
        raise ConfigError(f"--eval-batch-size must be at least 1, not {options.eval_batch_size}")
    if len(options.weight_decays) != 1:
        raise ConfigError(f"EAO trains with one weight decay per run, not {options.weight_decays}")
    if not options.heads:
        raise ConfigError("EAO needs at least one --head")


def check_grid_values(
    lrs: Sequence[float],
    weight_decays: Sequence[float] = (),
    eps: Sequence[float] = (),
    betas: Sequence[tuple[float, float]] = (),
    cs: Sequence[float] = (),
) -> None:
    """Optimiser values out of range would train silently wrong heads (a negative lr climbs the loss) or
    crash deep inside a run; they are one clear error before any disease is touched."""
    _check_all("--lrs", lrs, lambda v: v > 0, "positive")
    _check_all("weight decay (--weight-decays)", weight_decays, lambda v: v >= 0, "at least 0")
    _check_all("--eps", eps, lambda v: v > 0, "positive")
    _check_all("--cs", cs, lambda v: v > 0, "positive")
    for pair in betas:
        _check_all("--betas", pair, lambda v: 0 <= v < 1, "in [0, 1)")


def _check_all(flag: str, values: Sequence[float], ok: Callable[[float], bool], wording: str) -> None:
    bad = [v for v in values if not ok(v)]
    if bad:
        raise ConfigError(f"{flag} values must be {wording}, not {bad[0]:g}")
