"""Where the work of ``extract``, ``probe`` and ``run`` goes: this process (``local``) or Slurm job arrays.

The same keys serve the run configuration (``executor: {kind: slurm, partition: gpu, ...}``) and the command
line (``--executor slurm --slurm partition=gpu --slurm gpus_per_task=1``), so both read alike.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import typing
from dataclasses import dataclass, field
from typing import Literal

from ctfm.core.errors import ConfigError

KINDS = ("local", "slurm")
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # Slurm's --time forms: M, M:S, H:M:S, D-H[:M[:S]]
_MEM = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)


@dataclass
class ExecutorConfig:
    """How cluster work is submitted. ``local`` runs in this process (the other keys are ignored)."""

    kind: Literal["local", "slurm"] = "local"
    partition: str | None = None
    gpus_per_task: int = 0  # --gres=gpu:N; team containers get the task's GPU
    cpus_per_task: int = 1
    mem: str | None = None  # Slurm's --mem, e.g. 32G
    time: str | None = None  # Slurm's --time per task, e.g. 02:00:00
    max_parallel: int = 0  # array throttle (%N); 0: as many as Slurm grants
    cases_per_task: int = 25  # extraction: cases per array task
    sbatch: list[str] = field(default_factory=list)  # further sbatch options, e.g. ["--qos=high"]
    poll_s: float = 2.0  # how often a waiting command looks at its tasks

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"executor kind {self.kind!r} is not one of {', '.join(KINDS)}")
        for name in ("gpus_per_task", "max_parallel"):
            if getattr(self, name) < 0:
                raise ConfigError(f"executor {name} must be >= 0, not {getattr(self, name)}")
        for name in ("cpus_per_task", "cases_per_task"):
            if getattr(self, name) < 1:
                raise ConfigError(f"executor {name} must be >= 1, not {getattr(self, name)}")
        if self.poll_s <= 0:
            raise ConfigError(f"executor poll_s must be positive, not {self.poll_s}")
        if self.time is not None and not _TIME.match(self.time):
            raise ConfigError(f"executor time {self.time!r} is not a Slurm time (M, H:M:S or D-H:M:S)")
        if self.mem is not None and not _MEM.match(self.mem):
            raise ConfigError(f"executor mem {self.mem!r} is not a Slurm size (e.g. 32G)")


def executor_from_options(kind: str, pairs: list[str] | None) -> ExecutorConfig:
    """``--executor KIND`` and ``--slurm KEY=VALUE`` (repeatable; ``sbatch`` values are split like a shell)."""
    hints = typing.get_type_hints(ExecutorConfig)
    names = [f.name for f in dataclasses.fields(ExecutorConfig) if f.name != "kind"]
    values: dict[str, object] = {"kind": kind}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in names:
            raise ConfigError(f"--slurm {pair!r}: expected KEY=VALUE with KEY one of {', '.join(names)}")
        if key == "sbatch":
            values.setdefault("sbatch", [])
            values["sbatch"].extend(shlex.split(text))  # type: ignore[attr-defined]
            continue
        kind_of = hints[key]
        try:
            values[key] = kind_of(text) if kind_of in (int, float) else text
        except ValueError:
            raise ConfigError(f"--slurm {key}={text!r}: expected {kind_of.__name__}") from None
    if pairs and kind != "slurm":
        raise ConfigError("--slurm settings need --executor slurm")
    return ExecutorConfig(**values)  # type: ignore[arg-type]
