"""The run configuration of ``ctfm run CONFIG.yaml``: parsed up front, every bad key named.

A config describes one benchmark run from data to leaderboard. Unknown keys, wrong types, unknown diseases
and extractors and missing folders are reported together, each on one line with its dotted key path, before
any work starts.

The stage settings parse straight into the library's own option types, checked by their own constructors:
``eval`` into :class:`~ctfm.evaluate.stage.EvalOptions`, ``leaderboard`` into
:class:`~ctfm.evaluate.stage.LeaderboardOptions`, ``executor`` into :class:`~ctfm.executor.config.ExecutorConfig`,
and ``probe`` (whose YAML shape groups both tasks) into one :class:`~ctfm.probe.options.ProbeOptions` per task
(:attr:`RunConfig.probes`). What a stage reads and writes (folders, model) the pipeline fills in per stage.

Example:
    >>> cfg = load_run_config(configs_dir() / "demo.yaml")  # doctest: +SKIP
    >>> cfg.diseases[:2]  # doctest: +SKIP
    ['fatty_liver', 'splenomegaly']
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ctfm.core.benchmark import configs_dir, configured, load_benchmark
from ctfm.core.errors import ConfigError
from ctfm.evaluate.stage import EvalOptions, LeaderboardOptions
from ctfm.executor.config import ExecutorConfig
from ctfm.probe.options import ProbeOptions


@dataclass
class SynthData:
    cases: int = 60
    seed: int = 0
    shape: Literal["demo", "full"] = "demo"


@dataclass
class DataSection:
    path: Path | None = None  # an existing benchmark folder (public layout) ...
    synth: SynthData | None = None  # ... or a synthetic one generated under the output root


@dataclass
class MasksSection:
    margin_mm: float = 0.0


@dataclass
class ExtractorSpec:
    name: str
    model: str | None = None  # store model name; defaults to the extractor name
    weights: Path | None = None
    batch_size: int = 2
    workers: int = 1
    tasks: list[Literal["lp", "eao"]] | None = None  # default: the run's tasks


@dataclass
class ContainerSpec:
    """Team containers: a folder of ``<team>_lp.tar.gz`` / ``<team>_eao.tar.gz`` tarballs, an image tag already
    in the engine, or ctfm's own baseline (built offline). The store model is the team name (the tarball
    prefix, or the repository part of the tag)."""

    folder: Path | None = None
    image: str | None = None
    baseline: bool = False
    timeout_per_case: float = field(
        default_factory=configured("container_limits", "timeout_per_case_s", float)
    )
    memory: str = field(default_factory=configured("container_limits", "memory", str))
    tasks: list[Literal["lp", "eao"]] | None = None  # default: the run's tasks


@dataclass
class LinearProbeSection:
    lrs: list[float] | None = None
    weight_decays: list[float] | None = None
    norms: list[str] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    patience: int | None = None
    min_epoch: int | None = None


@dataclass
class EaoProbeSection:
    heads: list[str] = field(default_factory=lambda: ["attn-pool"])
    lrs: list[float] | None = None
    epochs: int | None = None
    patience: int | None = None
    batch_size: int | None = None
    min_epoch: int | None = None


@dataclass
class ProbeSection:
    lp: LinearProbeSection = field(default_factory=LinearProbeSection)
    eao: EaoProbeSection = field(default_factory=EaoProbeSection)
    seeds: list[int] = field(default_factory=lambda: [42])
    device: str = "auto"


# Where a stage reads and writes: set per stage by the pipeline (dataclasses.replace), never by the YAML.
UNSET = Path("<set per stage>")
# The library option types a section parses into: the keys the YAML may set, the run config's own defaults.
SECTION_KEYS: dict[type, tuple[str, ...]] = {
    EvalOptions: ("split", "strategies", "bootstrap", "resampling"),
    LeaderboardOptions: ("metrics", "bootstrap", "resampling"),
}
_RUN_DEFAULTS: dict[type, Callable[[], dict[str, Any]]] = {
    EvalOptions: lambda: {"runs": UNSET, "store": UNSET, "labels": UNSET, "out": UNSET,
                          "strategies": ["val_balanced_acc"]},
    LeaderboardOptions: lambda: {"results": UNSET, "out": UNSET, "metrics": load_benchmark().ranking_metrics},
}  # fmt: skip


def section_values(options: Any) -> dict[str, Any]:
    """The values a run config section set on a library option type (what its stages' keys fingerprint)."""
    return {k: getattr(options, k) for k in SECTION_KEYS[type(options)]}


def section_options(cls: type, **given: Any) -> Any:
    """A library option type as a run config section makes it: the run's defaults, then ``given``."""
    return cls(**{**_RUN_DEFAULTS[cls](), **given})


@dataclass
class RunConfig:
    output: Path
    data: DataSection
    diseases: list[str] | Literal["all"] = "all"
    tasks: list[Literal["lp", "eao"]] = field(default_factory=lambda: ["lp"])
    extractors: list[ExtractorSpec] = field(default_factory=list)
    containers: list[ContainerSpec] = field(default_factory=list)
    masks: MasksSection = field(default_factory=MasksSection)
    probe: ProbeSection = field(default_factory=ProbeSection)
    eval: EvalOptions = field(default_factory=lambda: section_options(EvalOptions))
    leaderboard: LeaderboardOptions = field(default_factory=lambda: section_options(LeaderboardOptions))
    seed: int = 42
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # ctfm.executor: local or slurm
    # task -> the probe options ``probe`` parses into (all but model, out, store, labels and diseases)
    probes: dict[str, ProbeOptions] = field(default_factory=dict, init=False, repr=False)

    def disease_list(self) -> list[str]:
        bench = load_benchmark()
        return list(bench.diseases) if self.diseases == "all" else list(self.diseases)

    def to_dict(self) -> dict[str, Any]:
        """The config as YAML keys (``config.resolved.yaml``): each section with the keys it accepts."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        for name, value in out.items():
            if type(value) in SECTION_KEYS:
                out[name] = section_values(value)
        return _plain(out)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


class _Problems(list):
    def add(self, key: str, message: str) -> None:
        self.append(f"{key}: {message}")


def _convert(value: Any, tp: Any, key: str, problems: _Problems, base: Path) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = _Problems()
        for option in options:
            trial = _Problems()
            result = _convert(value, option, key, trial, base)
            if not trial:
                return result
            errors.extend(trial)
        problems.extend(errors[:1])
        return None
    if origin is Literal:
        if value not in args:
            problems.add(key, f"{value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.add(key, f"expected a list, got {type(value).__name__}")
            return []
        return [_convert(v, args[0], f"{key}[{i}]", problems, base) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, problems, base)
    if tp is Path:
        if not isinstance(value, str):
            problems.add(key, f"expected a path, got {type(value).__name__}")
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        with contextlib.suppress(ValueError):  # YAML 1.1 reads 1e-3 (no dot) as a string
            return float(value)
    if tp in (int, float, str, bool) and (
        not isinstance(value, tp) or (tp is int and isinstance(value, bool))
    ):
        problems.add(key, f"expected {tp.__name__}, got {value!r}")
        return None
    return value


def _build(cls: type, raw: Any, prefix: str, problems: _Problems, base: Path) -> Any:
    if not isinstance(raw, dict):
        problems.add(prefix or "config", f"expected a mapping, got {type(raw).__name__}")
        return None
    before = len(problems)
    hints = typing.get_type_hints(cls)
    keys = SECTION_KEYS.get(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and (keys is None or f.name in keys)}
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            problems.add(path, f"unknown key (allowed: {', '.join(fields)})")
            continue
        kwargs[key] = _convert(value, hints[key], path, problems, base)
    for name, f in fields.items():
        if (
            name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            problems.add(f"{prefix}.{name}" if prefix else name, "required key is missing")
    for name, known in _NAMED.get(cls, {}).items():
        if name in kwargs:
            _check_names(problems, f"{prefix}.{name}", kwargs[name], known())
    if len(problems) > before:
        return None
    try:
        return section_options(cls, **kwargs) if keys else cls(**kwargs)
    except (TypeError, ConfigError) as exc:  # ConfigError: a section that checks its own values
        problems.add(prefix or "config", str(exc))
        return None


def _check_semantics(cfg: RunConfig, problems: _Problems) -> None:
    bench = load_benchmark()
    if (cfg.data.path is None) == (cfg.data.synth is None):
        problems.add("data", "give exactly one of `path` (a benchmark folder) or `synth` (generate one)")
    elif cfg.data.path is not None and not cfg.data.path.is_dir():
        problems.add("data.path", f"folder {cfg.data.path} does not exist")
    if cfg.diseases != "all":
        for i, disease in enumerate(cfg.diseases):
            if disease not in bench.diseases:
                problems.add(
                    f"diseases[{i}]", f"unknown disease {disease!r} (known: {', '.join(bench.diseases)})"
                )
    from ctfm.extract.containers import RunSettings
    from ctfm.extract.extractors import available as available_extractors

    known = available_extractors()
    for i, spec in enumerate(cfg.extractors):
        if spec.name not in known:
            problems.add(
                f"extractors[{i}].name", f"unknown extractor {spec.name!r} (known: {', '.join(known)})"
            )
        if spec.weights is not None and not spec.weights.is_file():
            problems.add(f"extractors[{i}].weights", f"file {spec.weights} does not exist")
    for i, spec in enumerate(cfg.containers):
        given = [x for x in (spec.folder, spec.image, spec.baseline or None) if x]
        if len(given) != 1:
            problems.add(f"containers[{i}]", "give exactly one of `folder`, `image` or `baseline: true`")
        elif spec.folder is not None and not spec.folder.is_dir():
            problems.add(f"containers[{i}].folder", f"folder {spec.folder} does not exist")
        # the runner's own settings checks (memory size, time limit), now rather than at the extract stage
        _collect(
            problems,
            f"containers[{i}]",
            RunSettings,
            memory=spec.memory,
            timeout_per_case=spec.timeout_per_case,
        )
    if not cfg.extractors and not cfg.containers:
        problems.add("extractors", "name at least one extractor or container to score")
    cfg.probes = _probe_options(cfg, problems)


def _probe_options(cfg: RunConfig, problems: _Problems) -> dict[str, ProbeOptions]:
    """One :class:`ProbeOptions` per task from the ``probe`` section, made (and so checked) now, so a bad
    value fails before extraction starts rather than after it; every problem is collected."""
    from ctfm.probe.eao_grid import eao_head_specs
    from ctfm.probe.training import TrainConfig

    made = {}
    for task, section, rules in (("lp", cfg.probe.lp, "linear_probe"), ("eao", cfg.probe.eao, "eao")):
        key = f"probe.{task}"
        sizes = {
            "epochs": section.epochs,
            "batch_size": section.batch_size,
            "patience": section.patience,
            "min_epoch": section.min_epoch,
        }
        train = _collect(problems, key, TrainConfig.from_benchmark, rules, device=cfg.probe.device, **sizes)
        heads = _collect(problems, key, eao_head_specs, section.heads) if task == "eao" else None
        axes = {"weight_decays": section.weight_decays, "norms": section.norms} if task == "lp" else {}
        made[task] = _collect(
            problems, key, ProbeOptions.defaults, task, store=UNSET, model="", labels=UNSET, out=UNSET,
            diseases=cfg.disease_list(), train=train, lrs=section.lrs, seeds=cfg.probe.seeds, heads=heads,
            retrain_changed=True,  # the config is the truth: a disease trained otherwise is redone
            **axes,
        )  # fmt: skip
    return made


def _collect(problems: _Problems, key: str, make: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``make(...)``, or None with its ConfigError a problem of ``key`` (so every problem is reported at once)."""
    try:
        return make(*args, **kwargs)
    except ConfigError as exc:
        problems.add(key, str(exc))
        return None


def _check_names(problems: _Problems, key: str, names: list[str], known: Sequence[str]) -> None:
    """A non-empty list of known names (strategies, metrics), each wrong one named with its index."""
    if not names:
        problems.add(key, f"give at least one of {', '.join(known)}")
    for i, name in enumerate(names):
        if name not in known:
            problems.add(f"{key}[{i}]", f"{name!r} is not one of {', '.join(known)}")


def _known_metrics() -> Sequence[str]:
    from ctfm.core.metrics import METRICS

    return METRICS


# List fields of a library section whose names are checked one by one (each wrong one named with its index).
_NAMED: dict[type, dict[str, Callable[[], Sequence[str]]]] = {
    EvalOptions: {"strategies": lambda: load_benchmark().section("linear_probe")["strategies"]},
    LeaderboardOptions: {"metrics": _known_metrics},
}


def parse_run_config(raw: Any, base: Path) -> RunConfig:
    """Validate a loaded YAML mapping; relative paths resolve against ``base`` (the config's folder)."""
    problems = _Problems()
    cfg = _build(RunConfig, raw, "", problems, base)
    if cfg is not None and not problems:
        _check_semantics(cfg, problems)
    if problems:
        raise ConfigError("invalid run config:\n  " + "\n  ".join(problems))
    return cfg


def load_run_config(path: Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a run config; ``overrides`` replace top-level keys (e.g. ``output`` from ``--out``)."""
    path = Path(path)
    if not path.is_file():
        shipped = configs_dir() / path.name
        if path.parent == Path(".") and shipped.is_file():
            path = shipped
        else:
            raise ConfigError(f"{path}: run config not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if isinstance(raw, dict) and overrides:
        raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return parse_run_config(
            raw, base=Path.cwd() if path.parent == configs_dir() else path.parent.resolve()
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
