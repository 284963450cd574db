"""What a masks run reports: QC rows of ``masks_report.csv`` and where a case's label map lives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ctfm.core import nifti
from ctfm.core.fsutil import write_text_atomic

REPORT_NAME = "masks_report.csv"
REPORT_COLUMNS = ("case", "disease", "voxels", "volume_ml", "status", "message")
OK, EMPTY, ORGAN_MISSING, FAILED = "ok", "empty", "organ_missing", "failed"
STATUSES = (OK, EMPTY, ORGAN_MISSING, FAILED)
MULTILABEL, FOLDER = "multilabel", "folder"


@dataclass(frozen=True)
class MaskRow:
    """One QC row of ``masks_report.csv``: a (case, disease) mask and how it came out."""

    case: str
    disease: str
    voxels: int = 0
    volume_ml: float = 0.0
    status: str = OK
    message: str = ""


@dataclass
class MaskReport:
    """What :func:`build_masks` did: QC rows plus counters (a resumed run reads and writes nothing)."""

    rows: list[MaskRow] = field(default_factory=list)
    written: int = 0  # mask files written
    skipped: int = 0  # masks already up to date, not rewritten
    maps_read: int = 0  # label maps (or per-class folders) read
    workers: int = 1  # processes that did the work
    path: Path | None = None  # the report CSV

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.status] = out.get(row.status, 0) + 1
        return out

    @property
    def failed(self) -> list[MaskRow]:
        return [r for r in self.rows if r.status == FAILED]

    @property
    def flagged(self) -> list[MaskRow]:
        """Rows a human should look at: empty masks and absent organs (failures are listed separately)."""
        return [r for r in self.rows if r.status in (EMPTY, ORGAN_MISSING)]

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class LabelSource:
    """Where one case's TotalSegmentator output lives: a multilabel file or a per-class folder."""

    case: str
    path: Path
    layout: str  # MULTILABEL or FOLDER

    def organ_file(self, organ: str) -> Path:
        """``<organ>.nii.gz`` in the case folder, or ``<organ>.nii`` where only that exists (discovery takes both)."""
        packed = self.path / f"{organ}{nifti.NII_SUFFIX}"
        plain = self.path / f"{organ}.nii"
        return plain if not packed.exists() and plain.exists() else packed


def write_report(rows: Sequence[MaskRow], path: Path) -> Path:
    """Write the QC rows, keeping the earlier report's rows of other (case, disease) pairs: a run on some
    diseases or cases must not erase what is known about the others."""
    import pandas as pd

    table = pd.DataFrame([asdict(r) for r in rows], columns=list(REPORT_COLUMNS))
    try:
        earlier = pd.read_csv(path, dtype={"case": str, "disease": str}, keep_default_na=False)
    except (OSError, ValueError):
        earlier = None  # no report yet, or unreadable: this run's rows alone
    if earlier is not None and set(REPORT_COLUMNS) <= set(earlier.columns):
        fresh = set(zip(table["case"], table["disease"], strict=True))
        kept = [(c, d) not in fresh for c, d in zip(earlier["case"], earlier["disease"], strict=True)]
        table = pd.concat([earlier.loc[kept, list(REPORT_COLUMNS)], table], ignore_index=True)
        table = table.sort_values(["disease", "case"], kind="stable", ignore_index=True)
    write_text_atomic(path, table.to_csv(index=False))
    return path
