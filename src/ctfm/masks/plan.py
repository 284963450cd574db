"""Which organs make each disease's mask, as bits, and the class map that numbers them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctfm.core.benchmark import ClassMap, load_benchmark
from ctfm.core.errors import ConfigError


def resolve_class_map(class_map: ClassMap | str | Path | None) -> ClassMap:
    """A :class:`ClassMap` from an object, a version name (``"v2"``) or a TSV file (columns id, name)."""
    if isinstance(class_map, ClassMap):
        return class_map
    if class_map is None:
        return load_benchmark().class_map("v2")
    if str(class_map) in load_benchmark().raw["class_maps"]:
        return load_benchmark().class_map(str(class_map))
    path = Path(class_map)
    if not path.is_file():
        raise ConfigError(f"class map {path}: file not found (give a TSV with columns id, name, or 'v2')")
    return ClassMap.from_tsv(path, version=path.stem)


def optional_organs() -> frozenset[str]:
    """Organs whose absence is normal (kidney cysts are findings, not organs): not flagged as missing."""
    return frozenset(load_benchmark().raw.get("masks", {}).get("optional_organs", []))


def check_diseases(diseases: Iterable[str] | None) -> list[str]:
    bench = load_benchmark()
    if diseases is None:
        return list(bench.roi_diseases)
    out = list(dict.fromkeys(diseases))
    for disease in out:
        bench.roi_organs(disease)  # raises ConfigError naming the ROI diseases
    return out


@dataclass(frozen=True)
class Plan:
    """Organs as bits and diseases grouped by identical organ sets (one computation and one encoding each)."""

    organs: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]  # organ names of each group
    members: tuple[tuple[str, ...], ...]  # diseases of each group

    @classmethod
    def of(cls, diseases: Sequence[str]) -> Plan:
        bench = load_benchmark()
        organs: dict[str, None] = {}
        groups: dict[tuple[str, ...], list[str]] = {}
        for disease in diseases:
            key = tuple(sorted(bench.roi_organs(disease)))
            organs.update(dict.fromkeys(key))
            groups.setdefault(key, []).append(disease)
        return cls(tuple(organs), tuple(groups), tuple(tuple(v) for v in groups.values()))

    def bit(self, organ: str) -> int:
        return 1 << self.organs.index(organ)

    def group_bits(self, g: int) -> int:
        return sum(self.bit(o) for o in self.groups[g])

    @property
    def dtype(self) -> type:
        return np.uint8 if len(self.organs) <= 8 else np.uint16 if len(self.organs) <= 16 else np.uint64


def check_covers(class_map: ClassMap, diseases: Sequence[str]) -> None:
    """Refuse a class map without an organ the diseases need: every mask would be silently empty."""
    bench = load_benchmark()
    ids, optional = class_map.ids, optional_organs()
    lacking = {
        organ: [d for d in diseases if organ in bench.roi_organs(d)]
        for organ in Plan.of(diseases).organs
        if organ not in ids and organ not in optional
    }
    if lacking:
        detail = "; ".join(f"{o} (needed by {', '.join(ds)})" for o, ds in lacking.items())
        raise ConfigError(f"class map {class_map.version!r} has no class named {detail}")
