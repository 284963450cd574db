"""The benchmark definition, read from ``configs/`` so no table is repeated in code.

Example:
    >>> from ctfm.core.benchmark import load_benchmark
    >>> bench = load_benchmark()
    >>> bench.roi_organs("renal_cyst")
    ('kidney_cyst_left', 'kidney_cyst_right', 'kidney_left', 'kidney_right')
    >>> bench.class_map().ids["liver"]
    5
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ctfm.core.errors import ConfigError

BENCHMARK_FILE = "benchmark.yaml"


def configs_dir() -> Path:
    """The folder holding the shipped configs: packaged copy in a wheel, the repo's ``configs/`` otherwise."""
    packaged = Path(str(resources.files("ctfm"))) / "configs"
    if (packaged / BENCHMARK_FILE).is_file():
        return packaged
    repo = Path(__file__).resolve().parents[3] / "configs"
    if (repo / BENCHMARK_FILE).is_file():
        return repo
    raise ConfigError(f"cannot find {BENCHMARK_FILE}: looked in {packaged} and {repo}")


@dataclass(frozen=True)
class ClassMap:
    """A TotalSegmentator label map's id <-> class name table."""

    version: str
    names: dict[int, str]

    @classmethod
    def from_tsv(cls, path: Path, version: str) -> ClassMap:
        try:
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(fh, delimiter="\t"))
            names = {int(r["id"]): r["name"].strip() for r in rows}
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"{path}: not a class map TSV with columns id, name ({exc})") from exc
        if not names:
            raise ConfigError(f"{path}: empty class map")
        return cls(version=version, names=names)

    @property
    def ids(self) -> dict[str, int]:
        return {name: i for i, name in self.names.items()}


@dataclass(frozen=True)
class Benchmark:
    """Diseases, organs, label conventions and default protocols of one benchmark."""

    name: str
    raw: dict[str, Any] = field(repr=False)
    root: Path = field(repr=False)

    @property
    def roi_diseases(self) -> dict[str, tuple[str, ...]]:
        return {d: tuple(organs) for d, organs in self.raw["roi_diseases"].items()}

    @property
    def nonroi_diseases(self) -> tuple[str, ...]:
        return tuple(self.raw["nonroi_diseases"])

    @property
    def diseases(self) -> tuple[str, ...]:
        """All AMOS diseases: ROI ones first, in config order."""
        return (*self.roi_diseases, *self.nonroi_diseases)

    @property
    def ranking_metrics(self) -> list[str]:
        """The challenge ranks teams on these metrics (mean rank over diseases and metrics)."""
        return list(self.raw["ranking"]["metrics"])

    def default(self, section: str, key: str) -> Any:
        """A default the CLI and ``ctfm run`` share (``container_limits``, ``evaluation``, ``ranking``)."""
        try:
            return self.raw[section][key]
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{BENCHMARK_FILE} has no {section}.{key}") from exc

    @property
    def chest_tasks(self) -> dict[str, str]:
        return dict(self.raw.get("chest_tasks", {}))

    def is_roi(self, disease: str) -> bool:
        self.check_disease(disease)
        return disease in self.roi_diseases

    def roi_organs(self, disease: str) -> tuple[str, ...]:
        if disease not in self.roi_diseases:
            raise ConfigError(
                f"{disease!r} is not an ROI disease; ROI diseases: {', '.join(self.roi_diseases)}"
            )
        return self.roi_diseases[disease]

    def view_of(self, disease: str) -> str:
        """Store view holding this disease's embeddings: its own mask view, or the shared whole-scan view."""
        return disease if self.is_roi(disease) else "full"

    def check_disease(self, disease: str) -> str:
        known = (*self.diseases, *self.chest_tasks)
        if disease not in known:
            raise ConfigError(f"unknown disease {disease!r}; known: {', '.join(known)}")
        return disease

    def section(self, key: str) -> dict[str, Any]:
        if key not in self.raw:
            raise ConfigError(f"{BENCHMARK_FILE} has no section {key!r}")
        return dict(self.raw[key])

    def class_map(self, version: str = "v2") -> ClassMap:
        files = self.raw["class_maps"]
        if version not in files:
            raise ConfigError(f"no TotalSegmentator class map {version!r}; known: {', '.join(files)}")
        return _load_class_map(self.root / files[version], version)


@cache
def _load_class_map(path: Path, version: str) -> ClassMap:
    return ClassMap.from_tsv(path, version)


def configured(section: str, key: str, kind: Callable[[Any], Any]) -> Callable[[], Any]:
    """A dataclass ``default_factory`` reading a shared default (:meth:`Benchmark.default`) when used."""
    return lambda: kind(load_benchmark().default(section, key))


@cache
def load_benchmark(path: Path | None = None) -> Benchmark:
    """Load the benchmark definition (default: the shipped ``configs/benchmark.yaml``)."""
    path = Path(path) if path else configs_dir() / BENCHMARK_FILE
    try:
        # libyaml's loader when present: every CLI start reads this file
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        raw = yaml.load(path.read_text(), Loader=loader)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read benchmark definition {path}: {exc}") from exc
    for key in ("name", "roi_diseases", "nonroi_diseases", "class_maps", "labels"):
        if key not in raw:
            raise ConfigError(f"{path}: missing key {key!r}")
    return Benchmark(name=raw["name"], raw=raw, root=path.parent)
