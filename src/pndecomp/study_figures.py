"""The studies' figures: models, training budgets and the robustness of the claims across settings, each drawn
from a study's small tables (pndecomp.figures has the figures of one run and the helpers both use)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .compare import patch_metric  # noqa: E402
from .figures import _save  # noqa: E402


def model_comparison(table: pd.DataFrame, png, pdf, dpi: int = 150) -> None:
    """A model study: each metric (eval R², the probe gaps) against relative depth, one line per model,
    95 % bootstrap intervals as bars."""
    metrics = list(dict.fromkeys(table["metric"]))
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = table[table["metric"] == metric]
        for model in dict.fromkeys(table["model"]):
            mine = rows[rows["model"] == model].sort_values("depth")
            (line,) = ax.plot(mine["depth"], mine["value"], marker="o", markersize=4, label=model)
            ax.vlines(mine["depth"], mine["lo"], mine["hi"], color=line.get_color(), linewidth=1)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set(xlabel="relative depth", title=metric)
    axes[0][-1].legend(title="model", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _save(fig, png, pdf, dpi)


def budget_comparison(table: pd.DataFrame, png, pdf, dpi: int = 150) -> None:
    """A budget study: each metric against the training budget (steps, log axis, ticks at the budgets), one
    line per (predictor kind, layer) with 95 % intervals as bars; the references dotted, per layer: the best
    baseline on the R² panels, the ``mean`` patch (which no predictor changes) on the ``hhat`` patch's."""
    mean_patch, hhat_patch = patch_metric("mean"), patch_metric("hhat")
    predictors = table[(table["kind"] != "baseline") & (table["metric"] != mean_patch)]
    metrics = list(dict.fromkeys(predictors["metric"]))
    layers = list(dict.fromkeys(predictors["layer"]))
    colors = dict(zip(layers, sns.color_palette(n_colors=len(layers)), strict=True))
    styles = dict(zip(dict.fromkeys(predictors["kind"]), ["-", "--", "-.", ":"] * 4, strict=False))
    budgets = sorted(set(predictors["steps"]))
    sns.set_theme(style="whitegrid")
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 2.4, 3.6 * nrows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    references = {metric: table[(table["kind"] == "baseline") & (table["metric"] == metric)] for metric in metrics}
    if hhat_patch in references:
        references[hhat_patch] = table[table["metric"] == mean_patch].assign(baseline="mean patch")
    handles = {}
    for ax, metric in zip(axes.flat, metrics, strict=False):
        rows = predictors[predictors["metric"] == metric]
        for (kind, layer), line in rows.groupby(["kind", "layer"], sort=False):
            line = line.sort_values("steps")
            handles[f"{kind}, layer {layer}"] = ax.plot(
                line["steps"], line["value"], marker="o", markersize=4, color=colors[layer],
                linestyle=styles[kind])[0]
            ax.vlines(line["steps"], line["lo"], line["hi"], color=colors[layer], linewidth=1)
        for layer, rows_of_layer in references[metric].groupby("layer", sort=False):
            first = rows_of_layer.iloc[0]
            handles[f"{first['baseline']}, layer {layer}"] = ax.axhline(
                first["value"], color=colors[layer], linestyle=":", linewidth=1.2)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xticks(budgets, [f"{steps:,}" for steps in budgets])
        ax.xaxis.set_minor_locator(mticker.NullLocator())
        ax.set(xlabel="training steps (budget)", title=metric)
    fig.legend(handles.values(), handles.keys(), loc="outside right upper", frameon=False)
    _save(fig, png, pdf, dpi)


VERDICT_COLOURS = {"contradicted": "#c0392b", "inconclusive": "#d5d8dc", "holds": "#1e8449"}


def robustness_grid(grid: pd.DataFrame, png, pdf, dpi: int = 150) -> None:
    """Each claim (and layer group) × setting: its verdict (pndecomp.robustness.setting_verdicts), the
    untrained control's settings right of the line; white: not run."""
    codes = {verdict: code for code, verdict in enumerate(VERDICT_COLOURS)}
    rows = grid["statement"] + " · " + grid["layer_group"].fillna("").replace("", "all")
    table = grid.assign(row=rows, code=grid["verdict"].map(codes)).pivot(index="row", columns="setting", values="code")
    controls = list(dict.fromkeys(grid.loc[grid["control"].astype(bool), "setting"]))
    trained = [name for name in dict.fromkeys(grid["setting"]) if name not in controls]
    table = table.loc[list(dict.fromkeys(rows)), trained + controls]
    fig, ax = plt.subplots(figsize=(3 + 0.24 * table.shape[1], 1.5 + 0.24 * table.shape[0]))
    sns.heatmap(table, ax=ax, cmap=matplotlib.colors.ListedColormap(list(VERDICT_COLOURS.values())), vmin=-0.5,
                vmax=len(codes) - 0.5, linewidths=0.5, linecolor="white",
                cbar_kws={"ticks": list(codes.values()), "shrink": 0.4})
    ax.collections[0].colorbar.set_ticklabels(list(codes))
    if controls and trained:
        ax.axvline(len(trained), color="black", linewidth=1.5)
    ax.set(xlabel="setting (model/predictor; right of the line: the untrained control)", ylabel="")
    ax.tick_params(axis="x", labelsize=6, rotation=90)
    ax.tick_params(axis="y", labelsize=7)
    _save(fig, png, pdf, dpi)
