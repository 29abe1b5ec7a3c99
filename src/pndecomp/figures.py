"""Figures 1–6 (SPEC §7), each drawn from small metric files in a few seconds."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from . import tasks  # noqa: E402
from .representations import REPRESENTATIONS  # noqa: E402
from .storage import atomic_path  # noqa: E402

R2_FLOOR = -0.5


@dataclass(frozen=True)
class Figure:
    kind: str  # the drawing function, and the Snakemake rule draw_<kind>
    column: str  # the data column it plots
    caption: str  # in the report


# Figures 1-4, by file stem; the probe heatmaps (figures 5, 6, ...) are one per task (pndecomp.tasks).
FIGURES: dict[str, Figure] = {
    "fig1": Figure("learning_curve", "eval_mse", "Eval MSE of each layer's predictor against training step "
                   "(figure 1 of the paper), on the fixed eval subset."),
    "fig2": Figure("learning_curve", "eval_r2", "Eval R² = 1 − MSE/Var of each layer's predictor against "
                   "training step (figure 2)."),
    "fig3": Figure("per_position", "mse", "Per-position MSE over all eval windows; the first positions are "
                   "hidden (metrics.hide_first_positions) but kept in the data (figure 3)."),
    "fig4": Figure("per_position", "spearman_rho", "Spearman ρ between the novel component's norm ‖r‖ and the "
                   "LM's surprisal, per position across eval windows (figure 4)."),
}


def _save(fig, png: str | os.PathLike, pdf: str | os.PathLike) -> None:
    for path, fmt in ((png, "png"), (pdf, "pdf")):
        with atomic_path(path) as tmp:
            # metadata without dates keeps re-drawn files byte-identical
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight",
                        metadata={"CreationDate": None} if fmt == "pdf" else {"Software": None})
    plt.close(fig)


def _legend_outside(ax) -> None:
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), title="layer", frameon=False)


def _stack(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One long frame with a ``layer`` column, layers kept in the given order."""
    frame = pd.concat([table.assign(layer=str(layer)) for layer, table in tables.items()], ignore_index=True)
    frame["layer"] = pd.Categorical(frame["layer"], categories=[str(layer) for layer in tables], ordered=True)
    return frame


def learning_curves(curves: Mapping[str, pd.DataFrame], metric: str, png, pdf) -> None:
    """Figures 1 and 2: eval MSE or R² against training step, one line per layer."""
    labels = {"eval_mse": "eval MSE", "eval_r2": "eval R²"}
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(data=_stack(curves), x="step", y=metric, hue="layer", marker="o", markersize=3, ax=ax)
    ylabel = labels[metric]
    if metric == "eval_mse":
        ax.set_yscale("log")  # layers differ by orders of magnitude in scale
    elif ax.get_ylim()[0] < R2_FLOOR:
        # The first evaluations of an untrained predictor can be far below 0 and flatten the rest.
        ax.set_ylim(bottom=R2_FLOOR)
        ylabel += f" (axis cut at {R2_FLOOR})"
    ax.set(xlabel="training step", ylabel=ylabel, title=f"{labels[metric]} during predictor training")
    _legend_outside(ax)
    _save(fig, png, pdf)


def per_position(tables: Mapping[str, pd.DataFrame], column: str, hide_first: int, png, pdf) -> None:
    """Figures 3 and 4: per-position MSE or Spearman ρ(‖r‖, surprisal), positions ≤ hide_first left out."""
    labels = {"mse": "MSE", "spearman_rho": "Spearman ρ(‖r‖, surprisal)"}
    frame = _stack(tables)
    frame = frame[frame["position"] > hide_first]
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(data=frame, x="position", y=column, hue="layer", linewidth=1, ax=ax)
    if column == "spearman_rho":
        ax.axhline(0.0, color="grey", linewidth=0.8)
    else:
        ax.set_yscale("log")  # layers differ by orders of magnitude in scale
    ax.set(xlabel=f"token position (> {hide_first})", ylabel=labels[column], title=f"{labels[column]} by position")
    _legend_outside(ax)
    _save(fig, png, pdf)


def probe_heatmap(table: pd.DataFrame, task: str, png, pdf) -> None:
    """Figures 5, 6, ...: one task's test macro-F1, rows = layers, columns = representations, annotated."""
    layers = list(dict.fromkeys(table["layer"].astype(str)))
    grid = (table.assign(layer=table["layer"].astype(str))
            .pivot(index="layer", columns="representation", values="test_macro_f1")
            .reindex(index=layers, columns=list(REPRESENTATIONS)))
    grid.columns = [REPRESENTATIONS[c].label for c in grid.columns]
    fig, ax = plt.subplots(figsize=(0.9 * len(REPRESENTATIONS) + 1.4, 0.5 * len(layers) + 1.5))
    sns.heatmap(grid, annot=True, fmt=".3f", cmap="viridis", vmin=0, vmax=1, cbar_kws={"label": "macro-F1"}, ax=ax)
    ax.set(xlabel="representation", ylabel="layer", title=tasks.get(task).title)
    _save(fig, png, pdf)
