"""Task 1 for the shared runner (:mod:`ctfm.probe.runner`): the batched linear grid or the logistic-regression
sweep, and the checkpoints of its selected heads (ctfm's and the reference LP trainer's)."""

from __future__ import annotations

import shutil

import numpy as np

from ctfm.probe.checkpoint import save_selection
from ctfm.probe.data import DiseaseData, load_disease
from ctfm.probe.layout import RunLayout
from ctfm.probe.options import ProbeOptions
from ctfm.probe.reference import save_lp
from ctfm.probe.report import selected_train_loss
from ctfm.probe.runner import ProbeTask
from ctfm.probe.training import FitResult, TrainConfig


def save_linear_checkpoints(
    fit: FitResult, layout: RunLayout, data: DiseaseData, config: TrainConfig, reference: bool = True
) -> dict[str, str]:
    """One checkpoint per strategy: the selected head's weights, its norm statistics and provenance; with
    ``reference``, the same heads in the reference LP trainer's format too (grid heads only: the reference
    names its heads ``clf_lr_...``). Returns strategy -> reference file (run-relative)."""
    # an older run's reference files would be picked up with these
    shutil.rmtree(layout.reference_dir, ignore_errors=True)
    written = {}
    for name, sel in fit.selections.items():
        head = fit.heads[sel.head]
        weight, bias = sel.state["weight"], sel.state["bias"]
        norm = fit.extra["norms"][head["norm"]]
        if reference:
            path = save_lp(
                layout.reference_dir,
                strategy=name,
                score=sel.score,
                epoch=sel.epoch,
                head=head["name"],
                weight=weight,
                bias=bias,
                norm=norm,
                betas=tuple(head["betas"]),
                eps=head["eps"],
                val_metrics={**sel.metrics, "train_loss": selected_train_loss(fit, sel)},
            )
            written[name] = path.relative_to(layout.dir).as_posix()
        head = {
            "kind": "lp",
            "head_name": "linear",
            "head_kwargs": {"in_dim": int(weight.shape[1]), "out_dim": int(weight.shape[0])},
            "state_dict": {"linear.weight": weight, "linear.bias": bias},
            "norm": norm.to_dict(),
        }
        save_selection(layout, name, sel, data, config, fit, **head)
    return written


def linear_task(options: ProbeOptions) -> ProbeTask:
    """Task 1: the batched linear grid (``probe='grid'``) or the logistic-regression sweep (``'logreg'``)."""
    from ctfm.probe.linear import LOGREG_CS, build_grid, fit_linear_grid, fit_logreg

    grid = build_grid(options.lrs, options.weight_decays, options.norms, options.betas, options.eps)

    def load(disease: str) -> DiseaseData:
        return load_disease(options.store, options.model, options.labels, disease, "lp")

    def fit(data: DiseaseData, train: np.ndarray, val: np.ndarray, config: TrainConfig) -> FitResult:
        x_tr, y_tr = data.arrays(train)
        x_va, y_va = data.arrays(val)
        if options.probe == "logreg":
            return fit_logreg(x_tr, y_tr, x_va, y_va, options.norms, config, options.logreg_cs or LOGREG_CS)
        return fit_linear_grid(x_tr, y_tr, x_va, y_va, grid, config)

    def save(fit: FitResult, layout: RunLayout, data: DiseaseData, config: TrainConfig) -> dict[str, str]:
        return save_linear_checkpoints(fit, layout, data, config, reference=options.probe == "grid")

    return ProbeTask("lp", load, fit, save)
