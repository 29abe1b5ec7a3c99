"""Names and facts that Snakemake reads when it builds the DAG, kept free of heavy imports (the standard
library only), so that parsing the workflow does not import matplotlib or seaborn: the figures, by file
stem. :mod:`pndecomp.figures` draws them."""
from __future__ import annotations

from dataclasses import dataclass


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
                   "LM's surprisal, per position across eval windows (figure 4); dashed, the same ρ for the "
                   "residual of the best baseline, dotted, for the plain displacement ‖h_{t+1} − h_t‖: where "
                   "they match the solid line, the correlation belongs to h itself, not to the predictor."),
    # Beyond the paper: what its R² means.
    "fig2_baselines": Figure("layer_scores", "r2", "Final eval R² by layer: the predictor (solid) and every "
                             "baseline fit on predictor_train (dashed), with 95 % bootstrap intervals over "
                             "split units, on all rows (left) and without the rows whose ‖h‖ exceeds "
                             "metrics.outlier_norm_ratio × the median (right); the axis is cut where "
                             "baselines fall far below 0."),
    "fig3_r2": Figure("per_position", "r2", "Per-position R² = 1 − MSE_p/Var_p: unlike figure 3 it compares "
                      "across layers whose scales differ by orders of magnitude."),
}
