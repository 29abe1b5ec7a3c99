"""Figures 1–6 (docs/method.md §7), each drawn from small metric files in a few seconds."""
from __future__ import annotations

import os
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from . import tasks  # noqa: E402
from .compare import summary_models  # noqa: E402
from .representations import REPRESENTATIONS  # noqa: E402
from .storage import atomic_path  # noqa: E402

R2_FLOOR = -0.5


BAND_ALPHA = 0.2  # shading of 95 % bootstrap bands
# Figure 4's reference lines: per-position columns spearman_rho_<name> -> (line style, legend label).
RHO_REFERENCES = {"best_baseline": ("--", "best baseline's ‖residual‖"),
                  "displacement": (":", "‖h_{t+1} − h_t‖")}


def _save(fig, png: str | os.PathLike, pdf: str | os.PathLike, dpi: int = 150) -> None:
    for path, fmt in ((png, "png"), (pdf, "pdf")):
        with atomic_path(path) as tmp:
            # metadata without dates keeps re-drawn files byte-identical
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight",
                        metadata={"CreationDate": None} if fmt == "pdf" else {"Software": None})
    plt.close(fig)


def _legend_outside(ax) -> None:
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), title="layer", frameon=False)


def _stack(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One long frame with a ``layer`` column, layers kept in the given order."""
    frame = pd.concat([table.assign(layer=str(layer)) for layer, table in tables.items()], ignore_index=True)
    frame["layer"] = pd.Categorical(frame["layer"], categories=[str(layer) for layer in tables], ordered=True)
    return frame


def learning_curves(curves: Mapping[str, pd.DataFrame], metric: str, png, pdf, dpi: int = 150) -> None:
    """Figures 1 and 2: validation (predictor_val) MSE or R² against training step, one line per layer; a black
    star marks the evaluation whose weights were kept (the last, or the best one under a stopping rule)."""
    labels = {"val_mse": "validation MSE", "val_r2": "validation R²"}
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6, 4))
    frame = _stack(curves)
    sns.lineplot(data=frame, x="step", y=metric, hue="layer", marker="o", markersize=3, ax=ax)
    if "kept" in frame:
        kept = frame[frame["kept"].astype(bool)]
        ax.scatter(kept["step"], kept[metric], marker="*", s=80, color="black", zorder=3, label="kept weights")
    ylabel = labels[metric]
    if metric == "val_mse":
        ax.set_yscale("log")  # layers differ by orders of magnitude in scale
    elif ax.get_ylim()[0] < R2_FLOOR:
        # The first evaluations of an untrained predictor can be far below 0 and flatten the rest.
        ax.set_ylim(bottom=R2_FLOOR)
        ylabel += f" (axis cut at {R2_FLOOR})"
    ax.set(xlabel="training step", ylabel=ylabel, title=f"{labels[metric]} during predictor training")
    _legend_outside(ax)
    _save(fig, png, pdf, dpi)


def per_position(tables: Mapping[str, pd.DataFrame], column: str, hide_first: int, png, pdf, dpi: int = 150) -> None:
    """Figures 3 and 3_r2: a per-position metric, positions ≤ hide_first left out, one line per layer, with its
    95 % bootstrap band where the table has one (``<column>_lo``, ``<column>_hi``). Figure 4: :func:`rho_panels`."""
    if column == "spearman_rho":
        rho_panels(tables, hide_first, png, pdf, dpi)
        return
    labels = {"mse": "MSE", "r2": "R² = 1 − MSE_p / Var_p"}
    frame = _stack(tables)
    frame = frame[frame["position"] > hide_first]
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = dict(zip(frame["layer"].cat.categories, sns.color_palette(n_colors=len(tables))))
    for layer, part in frame.groupby("layer", observed=True):
        ax.plot(part["position"], part[column], color=colors[layer], linewidth=1, label=layer)
        if f"{column}_lo" in part:
            ax.fill_between(part["position"], part[f"{column}_lo"], part[f"{column}_hi"], color=colors[layer],
                            alpha=BAND_ALPHA, linewidth=0)
    ylabel = labels[column]
    if column == "mse":
        ax.set_yscale("log")  # layers differ by orders of magnitude in scale
    else:
        ax.axhline(0.0, color="grey", linewidth=0.8)
    if column == "r2" and ax.get_ylim()[0] < R2_FLOOR:
        ax.set_ylim(bottom=R2_FLOOR)
        ylabel += f" (axis cut at {R2_FLOOR})"
    bands = " (bands: 95 % bootstrap)" if f"{column}_lo" in frame else ""
    ax.set(xlabel=f"token position (> {hide_first})", ylabel=ylabel, title=f"{labels[column]} by position{bands}")
    ax.legend(title="layer", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _save(fig, png, pdf, dpi)


def binned(frame: pd.DataFrame, columns: list[str], width: int) -> pd.DataFrame:
    """The mean of each column over consecutive bins of ``width`` positions, at the bin's mean position."""
    bins = (frame["position"] - frame["position"].min()) // width
    return frame.groupby(bins)[["position", *columns]].mean()


def rho_panels(tables: Mapping[str, pd.DataFrame], hide_first: int, png, pdf, dpi: int = 150, bins: int = 16) -> None:
    """Figure 4: ρ(‖r‖, surprisal) by position, one panel per layer, beside the same ρ for residuals that need
    no learned predictor (the best baseline's, dashed; the plain displacement ‖h_{t+1} − h_t‖, dotted). The
    positions after ``hide_first`` are averaged in ``bins`` bins of consecutive positions (the value and its
    band's ends alike), which keeps each curve's trend and level and drops the per-position noise."""
    frame = _stack(tables)
    frame = frame[frame["position"] > hide_first]
    width = max(1, round(frame["position"].nunique() / bins))
    references = {f"spearman_rho_{name}": style for name, style in RHO_REFERENCES.items()
                  if f"spearman_rho_{name}" in frame}
    columns = ["spearman_rho", *(["spearman_rho_lo", "spearman_rho_hi"] if "spearman_rho_lo" in frame else []),
               *references]
    sns.set_theme(style="whitegrid")
    layers = list(dict.fromkeys(frame["layer"]))
    fig, axes = plt.subplots(1, len(layers), figsize=(2.6 * len(layers) + 1, 3.2), sharey=True, squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        part = binned(frame[frame["layer"] == layer], columns, width)
        ax.plot(part["position"], part["spearman_rho"], color="C0", linewidth=1.4, label="r of the predictor")
        if "spearman_rho_lo" in part:
            ax.fill_between(part["position"], part["spearman_rho_lo"], part["spearman_rho_hi"], color="C0",
                            alpha=BAND_ALPHA, linewidth=0)
        for reference, (style, label) in references.items():
            ax.plot(part["position"], part[reference], color="grey", linewidth=1, linestyle=style, label=label)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set(title=f"layer {layer}", xlabel="token position")
    axes[0][0].set_ylabel("Spearman ρ(‖r‖, surprisal)")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8)
    fig.suptitle(f"ρ(‖r‖, surprisal) by position: means over bins of {width} positions (> {hide_first}); "
                 "bands: 95 % bootstrap", fontsize=9, y=1.04)
    _save(fig, png, pdf, dpi)


def layer_scores(summary: pd.DataFrame, png, pdf, dpi: int = 150) -> None:
    """Figure 2_baselines: final eval R² per layer, the predictor and each baseline, with intervals, on all
    rows (left) and without the outlier rows (right: ‖h‖ above metrics.outlier_norm_ratio × the median),
    where the sink and massive-activation rows no longer dominate the SSE."""
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for ax, mask, title in ((axes[0], None, "all rows"), (axes[1], "no_outliers", "without outlier rows")):
        _r2_panel(ax, summary_models(summary, mask=mask), f"Predictor vs baselines, {title}", legend=ax is axes[1])
    _save(fig, png, pdf, dpi)


def r2_by_layer(models: pd.DataFrame, title: str, png, pdf, dpi: int = 150) -> None:
    """Eval R² per layer from long rows (model, kind, layer, r2, r2_lo, r2_hi): predictors solid, baselines
    dashed, intervals as vertical bars."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6, 4))
    _r2_panel(ax, models, title)
    _save(fig, png, pdf, dpi)


def _r2_panel(ax, models: pd.DataFrame, title: str, legend: bool = True) -> None:
    layers = list(dict.fromkeys(models["layer"].astype(str)))
    x = np.arange(len(layers))
    # A predictor may share its name with a baseline (ridge_ar4 is both): a line is a (model, kind).
    lines = list(dict.fromkeys(zip(models["model"], models["kind"])))
    shared = {name for name, _ in lines if sum(other == name for other, _ in lines) > 1}
    palette = sns.color_palette("tab10" if len(lines) <= 10 else "tab20", len(lines))  # no colour twice
    # At most ±0.18 of the spacing between layers, so that many lines still sit at their layer's tick.
    step = min(0.06, 0.36 / max(1, len(lines) - 1))
    for index, (name, kind) in enumerate(lines):
        rows = models[(models["model"] == name) & (models["kind"] == kind)]
        rows = rows.set_index(rows["layer"].astype(str)).reindex(layers)
        is_predictor = kind == "predictor"
        values = rows["r2"].to_numpy(dtype=float)
        offset = (index - (len(lines) - 1) / 2) * step  # side by side, so the intervals stay readable
        label = f"{name} ({kind})" if name in shared else name
        (line,) = ax.plot(x + offset, values, label=label, marker="o", markersize=4, color=palette[index],
                          linestyle="-" if is_predictor else "--", linewidth=2 if is_predictor else 1)
        lo, hi = rows["r2_lo"].to_numpy(dtype=float), rows["r2_hi"].to_numpy(dtype=float)
        if np.isfinite(lo).any():
            # Drawn from lo to hi, not as ± errors: a percentile interval of a ratio such as R² need not
            # contain the point estimate (it does not for the mean baseline of an untrained LM).
            ax.vlines(x + offset, lo, hi, color=line.get_color(), linewidth=1)
        for position, value in zip(x + offset, values):
            if value < R2_FLOOR:  # off the axis: a marker at its foot says where it went
                ax.annotate(f"{value:.2g}", (position, R2_FLOOR), xytext=(0, 3), textcoords="offset points",
                            ha="center", fontsize=6, color=line.get_color(), rotation=90)
    if ax.get_ylim()[0] < R2_FLOOR:
        # The top too: matplotlib's margin above the data is a share of the whole range, cut part included.
        shown = models[["r2", "r2_hi"]].to_numpy(dtype=float)
        top = max(np.nanmax(shown[np.isfinite(shown)], initial=0.0), 0.0)
        ax.set_ylim(R2_FLOOR, top + 0.05 * (top - R2_FLOOR))
        title += f"\naxis cut at {R2_FLOOR}: lower values are written at its foot"
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(x, layers)
    ax.set(xlabel="layer", ylabel="eval R²", title=title)
    if legend:
        ax.legend(title="model", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def probe_heatmap_cells(table: pd.DataFrame, differences: pd.DataFrame | None = None
                        ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """What a probe heatmap shows, as (values, annotations, marked) frames of layers × representations
    (columns: the representations' figure labels, in registry order).

    A cell's annotation is its test macro-F1, and below it its 95 % interval ``[lo, hi]`` when the table
    has one; ``marked`` is true for the ĥ cell of a layer whose paired interval of ĥ − r (``differences``)
    contains 0, and that cell's value gets a ``~`` suffix.
    """
    layers = list(dict.fromkeys(table["layer"].astype(str)))
    frame = table.assign(layer=table["layer"].astype(str))

    def grid(column: str) -> pd.DataFrame:
        if column not in frame:
            return pd.DataFrame(np.nan, index=layers, columns=list(REPRESENTATIONS))
        return (frame.pivot(index="layer", columns="representation", values=column)
                .reindex(index=layers, columns=list(REPRESENTATIONS)).astype(float))

    values, low, high = grid("test_macro_f1"), grid("test_macro_f1_lo"), grid("test_macro_f1_hi")
    annotations = pd.DataFrame("", index=layers, columns=list(REPRESENTATIONS))
    for layer in layers:
        for name in REPRESENTATIONS:
            value, lo, hi = values.at[layer, name], low.at[layer, name], high.at[layer, name]
            if np.isfinite(value):
                interval = f"\n[{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) and np.isfinite(hi) else ""
                annotations.at[layer, name] = f"{value:.2f}{interval}"
    marked = pd.DataFrame(False, index=layers, columns=list(REPRESENTATIONS))
    if differences is not None and len(differences) and "hhat" in REPRESENTATIONS:
        pairs = differences.assign(layer=differences["layer"].astype(str))
        pairs = pairs[(pairs["representation_a"] == "hhat") & (pairs["representation_b"] == "r")]
        for row in pairs.itertuples():
            if row.layer in marked.index and row.difference_lo <= 0 <= row.difference_hi:  # NaN: never marked
                marked.at[row.layer, "hhat"] = True
                value, newline, interval = annotations.at[row.layer, "hhat"].partition("\n")
                annotations.at[row.layer, "hhat"] = f"{value}~{newline}{interval}"
    labels = [REPRESENTATIONS[name].label for name in REPRESENTATIONS]
    for part in (values, annotations, marked):
        part.columns = labels
    return values, annotations, marked


def probe_heatmap(table: pd.DataFrame, task: str, png, pdf, differences: pd.DataFrame | None = None,
                  dpi: int = 150) -> None:
    """Figures 5, 6, ...: one task's test macro-F1, rows = layers, columns = representations, annotated
    with each cell's 95 % bootstrap interval when the table has intervals; ĥ cells whose paired interval
    of ĥ − r contains 0 are hatched (see :func:`probe_heatmap_cells`)."""
    values, annotations, marked = probe_heatmap_cells(table, differences)
    with_intervals = annotations.map(lambda text: "\n" in text).to_numpy().any()
    fig, ax = plt.subplots(figsize=((1.25 if with_intervals else 0.9) * values.shape[1] + 1.6,
                                    (0.75 if with_intervals else 0.5) * len(values) + 1.7))
    sns.heatmap(values, annot=annotations.to_numpy(), fmt="", annot_kws={"fontsize": 8 if with_intervals else 10},
                cmap="viridis", vmin=0, vmax=1, cbar_kws={"label": "macro-F1"}, ax=ax)
    for row, column in zip(*np.nonzero(marked.to_numpy())):
        # faint, and under the annotations, so the numbers stay readable
        ax.add_patch(Rectangle((column, row), 1, 1, fill=False, hatch="//", edgecolor=(1, 1, 1, 0.4), linewidth=0,
                               zorder=2))
    notes = []
    if with_intervals:
        notes.append("cells: macro-F1 [95 % interval, resampling split units]")
    if marked.to_numpy().any():
        notes.append("hatched ĥ, ~: interval of ĥ − r contains 0")
    xlabel = "representation" + ("\n" + "; ".join(notes) if notes else "")
    ax.set(xlabel=xlabel, ylabel="layer", title=tasks.get(task).title)
    _save(fig, png, pdf, dpi)


def _interval_lines(ax, x, rows: pd.DataFrame, label: str, offset: float = 0.0, **style) -> None:
    """A line of ``mean`` against x with ``low``..``high`` as vertical bars."""
    (line,) = ax.plot(x + offset, rows["mean"], marker="o", markersize=4, label=label, **style)
    ax.vlines(x + offset, rows["low"], rows["high"], color=line.get_color(), linewidth=1)


def patching_effects(table: pd.DataFrame, png, pdf, dpi: int = 150) -> None:
    """Pooled Δ cross-entropy and KL per layer, one line per patch kind, 95 % bootstrap intervals as bars."""
    pooled = table[table["scope"] == "pooled"]
    layers = list(dict.fromkeys(pooled["layer"].astype(str)))
    kinds = list(dict.fromkeys(pooled["kind"]))
    x = np.arange(len(layers))
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    panels = (("delta_ce", "Δ cross-entropy (nats)"), ("kl", "KL(clean ‖ patched) (nats)"))
    for ax, (metric, label) in zip(axes, panels):
        for index, kind in enumerate(kinds):
            rows = pooled[(pooled["metric"] == metric) & (pooled["kind"] == kind)]
            rows = rows.set_index(rows["layer"].astype(str)).reindex(layers)
            _interval_lines(ax, x, rows, kind, (index - (len(kinds) - 1) / 2) * 0.06)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xticks(x, layers)
        # Linear, like ΔCE: the patches' KLs are nats of the same size.
        ax.set(xlabel="patched layer", ylabel=label)
    n = int(pooled["n_windows"].iloc[0]) if len(pooled) else 0
    fig.suptitle(f"Patching block ℓ's output from the first patched position on ({n} eval windows)", y=1.02)
    axes[-1].legend(title="patch", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _save(fig, png, pdf, dpi)


def steering_effects(table: pd.DataFrame, png, pdf, dpi: int = 150) -> None:
    """Steering pooled over domains against α: one panel per metric (p_domain once per read-out layer),
    ĥ- vs r-directions as colours, steered layers as line styles."""
    pooled = table[table["scope"] == "pooled"].copy()
    read_at = pooled["probe_layer"].astype("Int64").astype(str)  # a TSV reads the column as float
    pooled["panel"] = np.where(pooled["metric"] == "p_domain", "p(domain) read at layer " + read_at, pooled["metric"])
    panels = list(dict.fromkeys(pooled.sort_values(["metric", "probe_layer"])["panel"]))
    styles = dict(zip(dict.fromkeys(pooled["layer"].astype(str)), ("-", "--", ":", "-.")))
    colours = dict(zip(("hhat", "r"), sns.color_palette(n_colors=2)))
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for (layer, source), rows in pooled[pooled["panel"] == panel].groupby(["layer", "source"], sort=False):
            rows = rows.sort_values("alpha")
            _interval_lines(ax, rows["alpha"].to_numpy(), rows, f"{'ĥ' if source == 'hhat' else 'r'}, layer {layer}",
                            color=colours.get(source), linestyle=styles.get(str(layer), "-"))
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set(xlabel="α (× median ‖h‖)", title=panel)
    axes[0][-1].legend(title="direction", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle("Steering along a domain's mean ĥ or r direction, pooled over domains", y=1.04)
    _save(fig, png, pdf, dpi)


#: The intervention figures, by their table: figures/<name>.png.
INTERVENTION_FIGURES = {"patching": patching_effects, "steering": steering_effects}
