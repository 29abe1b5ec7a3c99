"""The registry: every name Snakemake and the documentation list, and where each kind of entry is added.
It imports no torch, transformers, matplotlib or seaborn (a test runs a dry run under ``python -X importtime``),
so building the DAG stays cheap.

Defined here: the figures (:data:`FIGURES`, drawn by :mod:`pndecomp.figures`) and every rule's facts
(:data:`RULES`: run by Snakemake itself or as a job, given a GPU, estimated per predictor; each job rule's
resource estimate is the function of the same name in :mod:`pndecomp.resources.rules`).

Gathered here from their torch-free homes, where an entry is added:

- predictor kinds: :data:`PREDICTORS` (:mod:`pndecomp.predictor_kinds`; the module in :mod:`pndecomp.predictor`);
- probe tasks: :data:`TASKS` (:mod:`pndecomp.tasks`);
- probe representations: :data:`REPRESENTATIONS` (:mod:`pndecomp.representations`);
- patch kinds: :data:`PATCHES` (:mod:`pndecomp.patch_kinds`).
"""
from __future__ import annotations

from dataclasses import dataclass

from .patch_kinds import PATCHES
from .predictor_kinds import PREDICTORS
from .representations import REPRESENTATIONS
from .tasks import TASKS

__all__ = ["FIGURES", "PATCHES", "PREDICTORS", "REPRESENTATIONS", "RULES", "TASKS", "Figure", "Rule"]


@dataclass(frozen=True)
class Figure:
    kind: str  # the drawing function, and the Snakemake rule draw_<kind>
    column: str  # the data column it plots
    caption: str  # in the report


# Figures 1-4, by file stem; the probe heatmaps (figures 5, 6, ...) are one per task (pndecomp.tasks).
FIGURES: dict[str, Figure] = {
    "fig1": Figure("learning_curve", "val_mse", "Validation MSE of each layer's predictor against training step "
                   "(figure 1 of the paper), on the fixed subset of predictor_val windows (train.eval_windows); the "
                   "reported scores come from predictor_eval, after training. A black star marks the evaluation whose "
                   "weights were kept: the last, or the lowest under a stopping rule (train.stop_patience)."),
    "fig2": Figure("learning_curve", "val_r2", "Validation R² = 1 − MSE/Var of each layer's predictor against "
                   "training step (figure 2)."),
    "fig3": Figure("per_position", "mse", "Per-position MSE over all eval windows; the first positions are "
                   "hidden (metrics.hide_first_positions) but kept in the data (figure 3)."),
    "fig4": Figure("per_position", "spearman_rho", "Spearman ρ between the novel component's norm ‖r‖ and the "
                   "LM's surprisal, per position across eval windows (figure 4), one panel per layer; the "
                   "positions are averaged in 16 bins of consecutive positions (value and band alike), which "
                   "keeps the trend and drops the per-position noise. Dashed, the same ρ for the residual of the "
                   "best baseline, dotted, for the plain displacement ‖h_{t+1} − h_t‖: where they match the "
                   "solid line, the correlation belongs to h itself, not to the predictor."),
    # Beyond the paper: what its R² means.
    "fig2_baselines": Figure("layer_scores", "r2", "Final eval R² by layer: the predictor (solid) and every "
                             "baseline fit on predictor_train (dashed), with 95 % bootstrap intervals over "
                             "split units, on all rows (left) and without the rows whose ‖h‖ exceeds "
                             "metrics.outlier_norm_ratio × the median (right); the axis is cut where "
                             "baselines fall far below 0."),
    "fig3_r2": Figure("per_position", "r2", "Per-position R² = 1 − MSE_p/Var_p: unlike figure 3 it compares "
                      "across layers whose scales differ by orders of magnitude."),
}


@dataclass(frozen=True)
class Rule:
    local: bool = False  # run by Snakemake itself (a localrules entry): no job, no resource estimate
    gpu: bool = False  # the profiles give its jobs `gpu: 1` (sbatch --gpus=1): it runs the LM or a predictor
    per_predictor: bool = False  # one job per predictor, asking for that predictor's memory and time
    study: str | None = None  # run only by a study: "predictors" (two or more), "models" (`models:`), "seeds"


_JOB, _GPU, _PREDICTOR_GPU, _LOCAL = Rule(), Rule(gpu=True), Rule(gpu=True, per_predictor=True), Rule(local=True)

#: Every rule of the workflow, by name. A job rule (not local) has a resource estimate of the same name in
#: pndecomp.resources.rules and `mem_mb`/`runtime` from common.smk's stage_mem_mb/stage_runtime.
RULES: dict[str, Rule] = {
    "materialize_model": _JOB,
    "materialize_tokenizer": _JOB,
    "embedded_corpus": _JOB,
    "make_windows": _JOB,
    "extract_train_activations": _GPU,
    "extract_val_activations": _GPU,
    "extract_eval_activations": _GPU,
    "extract_probe_activations": _GPU,
    "train_predictor": _PREDICTOR_GPU,
    "train_predictors_joint": _PREDICTOR_GPU,
    "score_baselines": _GPU,
    "decompose_eval": _PREDICTOR_GPU,
    "probe_features": _PREDICTOR_GPU,
    "fit_probe": _JOB,
    "layer_scores": _JOB,
    "per_position_metrics": _JOB,
    "patch_layer": _PREDICTOR_GPU,
    "steer_layer": _GPU,
    "inspect_text": _GPU,
    "all": _LOCAL,
    "pipeline": _LOCAL,
    "resolved_config": _LOCAL,
    "probe_table": _LOCAL,
    "layer_summary": _LOCAL,
    "draw_learning_curve": _LOCAL,
    "draw_per_position": _LOCAL,
    "draw_layer_scores": _LOCAL,
    "draw_probe_heatmap": _LOCAL,
    "intervention_table": _LOCAL,
    "draw_interventions": _LOCAL,
    "claims": _LOCAL,
    "seed_claims": Rule(local=True, study="seeds"),
    "predictor_comparison": Rule(local=True, study="predictors"),
    "draw_predictor_comparison": Rule(local=True, study="predictors"),
    "budget_comparison": Rule(local=True, study="predictors"),
    "draw_budget_comparison": Rule(local=True, study="predictors"),
    "model_comparison": Rule(local=True, study="models"),
    "draw_model_comparison": Rule(local=True, study="models"),
    "study_claims": Rule(local=True, study="models"),
    "robustness": Rule(local=True, study="models"),
    "draw_robustness": Rule(local=True, study="models"),
}

