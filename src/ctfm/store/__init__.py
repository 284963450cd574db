"""THE embedding store: one folder per (model, task, view), one ``<case>.h5`` per case, one manifest.

Nothing else in ctfm builds the store's paths (:mod:`ctfm.store.layout`). A view's cases are written
atomically and recorded in an append-only manifest (:mod:`~ctfm.store.view`, :mod:`~ctfm.store.manifest`),
packed into memory-mapped arrays for training (:mod:`~ctfm.store.packed`), imported from untrusted
reference-format files (:mod:`~ctfm.store.importer`, :mod:`~ctfm.store.untrusted`) and exported in the
reference layout (:mod:`~ctfm.store.exporter`).

Example:
    >>> store = Store(Path("store"))  # doctest: +SKIP
    >>> view = store.view("my-model", "lp", "fatty_liver")  # doctest: +SKIP
    >>> view.write_case("synth_0000", np.zeros(16, np.float32), CaseRecord(case="synth_0000", status="ok"))  # doctest: +SKIP
    >>> view.packed().X.shape  # doctest: +SKIP
    (1, 16)
"""

from ctfm.store.exporter import DiseaseExport, ExportReport, export_reference
from ctfm.store.h5 import read_y_hat, write_y_hat
from ctfm.store.importer import ImportReport, import_folder
from ctfm.store.layout import FULL_VIEW, STATUSES, TASKS, check_task, check_view, sanitize_name
from ctfm.store.manifest import CaseRecord
from ctfm.store.packed import PACK_DTYPES, PackedEAO, PackedLP, to_bfloat16_bits, to_float32
from ctfm.store.timing import read_timing_csv, timing_csv_name
from ctfm.store.view import Store, View

__all__ = [
    "FULL_VIEW",
    "PACK_DTYPES",
    "STATUSES",
    "TASKS",
    "CaseRecord",
    "DiseaseExport",
    "ExportReport",
    "ImportReport",
    "PackedEAO",
    "PackedLP",
    "Store",
    "View",
    "check_task",
    "check_view",
    "export_reference",
    "import_folder",
    "read_timing_csv",
    "read_y_hat",
    "sanitize_name",
    "timing_csv_name",
    "to_bfloat16_bits",
    "to_float32",
    "write_y_hat",
]
