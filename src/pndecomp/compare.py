"""Comparisons across predictors: R² with intervals per (predictor, layer) beside the baselines, and
what each predictor costs (parameters, training seconds). Torch-free: it reads small metric files."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from . import storage


def summary_models(summary: pd.DataFrame, predictor: str = "predictor", mask: str | None = None) -> pd.DataFrame:
    """A layer summary (metrics/<predictor>/layer_summary.tsv) as long rows: model, kind (predictor or
    baseline), layer, r2, r2_lo, r2_hi (NaN where no interval was computed); on all rows, or on the rows
    of ``mask`` (``no_outliers``, ``late_positions``: the summary's ``<mask>_r2...`` columns)."""
    prefix = f"{mask}_" if mask else ""
    columns = {predictor: f"{prefix}r2",
               **{column.removeprefix(f"{prefix}r2_"): column for column in summary.columns
                  if column.startswith(f"{prefix}r2_") and not column.endswith(("_lo", "_hi"))
                  and column != f"{prefix}r2_minus_best"}}
    rows = []
    for name, column in columns.items():
        for _, row in summary.iterrows():
            rows.append({"model": name, "kind": "predictor" if name == predictor else "baseline",
                         "layer": str(row["layer"]), "r2": row[column],
                         "r2_lo": row.get(f"{column}_lo", np.nan), "r2_hi": row.get(f"{column}_hi", np.nan)})
    return pd.DataFrame(rows)


def predictor_comparison(summaries: Mapping[str, str], costs: Mapping[str, Mapping[str, str]]) -> pd.DataFrame:
    """One row per (model, layer): every predictor's eval R² with its interval, its parameter count, its
    training seconds (optimizer steps only) and seconds per 1,000 steps (empty for a closed-form fit, whose
    training seconds are the whole fit) and R² per million parameters, then the baselines (kind
    "baseline"), taken from the first predictor's summary: they are fit once per layer and scored on the
    same windows for every predictor.
    ``costs``: predictor -> layer -> the training job's cost.json."""
    frames = []
    for index, (name, path) in enumerate(summaries.items()):
        summary = pd.read_csv(path, sep="\t", dtype={"layer": str})
        models = summary_models(summary, predictor=name)
        models = models[(models["kind"] == "predictor") | (index == 0)].copy()
        models["n_windows"] = models["layer"].map(dict(zip(summary["layer"], summary["n_windows"])))
        mine = models["kind"] == "predictor"
        cost = [storage.read_json(costs[name][layer]) for layer in models.loc[mine, "layer"]]
        for key in ("parameters", "train_seconds", "steps"):
            models.loc[mine, key] = [entry[key] for entry in cost]
        models.loc[mine, "closed_form"] = [entry.get("closed_form", False) for entry in cost]
        frames.append(models)
    table = pd.concat(frames, ignore_index=True)
    per_step = table["train_seconds"] / table["steps"] * 1000
    table["seconds_per_1000_steps"] = per_step.where(table["closed_form"].eq(False))
    table["r2_per_million_parameters"] = table["r2"] / (table["parameters"] / 1e6)
    return table[["model", "kind", "layer", "r2", "r2_lo", "r2_hi", "n_windows", "parameters", "train_seconds",
                  "steps", "seconds_per_1000_steps", "r2_per_million_parameters"]]


# The probe gaps the model study plots: (task, sign, label); sign −1 turns ĥ − r into r − ĥ.
PROBE_GAPS = (("domain", 1, "domain F1: ĥ − r"), ("next_token_type_8", -1, "next-token type F1: r − ĥ"))


def model_comparison(summaries: Mapping[str, str], differences: Mapping[str, Mapping[str, str]],
                     depths: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Long rows (model, layer, depth, metric, value, lo, hi) for a model study: each model's main predictor's
    eval R² and the probe gaps of :data:`PROBE_GAPS` (paired bootstrap intervals), at the layers' relative
    depths."""
    rows = []
    for model, path in summaries.items():
        summary = pd.read_csv(path, sep="\t", dtype={"layer": str})
        for _, row in summary.iterrows():
            rows.append({"model": model, "layer": row["layer"], "metric": "eval R²", "value": row["r2"],
                         "lo": row.get("r2_lo", np.nan), "hi": row.get("r2_hi", np.nan)})
        for task, sign, label in PROBE_GAPS:
            if task not in differences.get(model, {}):
                continue
            table = pd.read_csv(differences[model][task], sep="\t", dtype={"layer": str})
            gaps = table[(table["representation_a"] == "hhat") & (table["representation_b"] == "r")]
            for _, row in gaps.iterrows():
                bounds = sorted((sign * row["difference_lo"], sign * row["difference_hi"]))
                rows.append({"model": model, "layer": row["layer"], "metric": label,
                             "value": sign * row["difference"], "lo": bounds[0], "hi": bounds[1]})
    table = pd.DataFrame(rows)
    table.insert(2, "depth", [depths[model][layer] for model, layer in zip(table["model"], table["layer"])])
    return table


# The probe gaps a budget study follows: (task, representation a, representation b, metric: F1 a − b).
BUDGET_GAPS = (("domain", "hhat", "r", "domain F1: ĥ − r"),
               ("next_token_type_8", "r", "hhat", "next-token type F1: r − ĥ"),
               ("domain", "hhat", "h_mean", "domain F1: ĥ − h_mean"))


def probe_gap(table: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per layer (the index) F1 a − b as ``value``, ``lo``, ``hi`` and ``n_test_documents`` from a probe
    differences table, where the pair is stored as a − b or as b − a (then negated); empty without it."""
    for first, second, sign in ((a, b, 1), (b, a, -1)):
        rows = table[(table["representation_a"] == first) & (table["representation_b"] == second)]
        if len(rows):
            bounds = np.sort(np.stack([sign * rows["difference_lo"], sign * rows["difference_hi"]]), axis=0)
            return pd.DataFrame({"value": (sign * rows["difference"]).to_numpy(), "lo": bounds[0], "hi": bounds[1],
                                 "n_test_documents": rows.get("n_test_documents", pd.Series(np.nan, rows.index))
                                 .to_numpy()}, index=pd.Index(rows["layer"].astype(str), name="layer"))
    return pd.DataFrame(columns=["value", "lo", "hi", "n_test_documents"], index=pd.Index([], name="layer"))


def pooled_delta_ce(patching: pd.DataFrame) -> pd.DataFrame:
    """A patching table's ΔCE pooled over positions, indexed by (layer, kind): ``mean``, ``low``, ``high``,
    ``n_documents``."""
    pooled = patching[(patching["scope"] == "pooled") & (patching["metric"] == "delta_ce")]
    return pooled.set_index([pooled["layer"].astype(str), "kind"])[["mean", "low", "high", "n_documents"]]


def patch_metric(kind: str) -> str:
    """The budget table's name of a patch kind's pooled ΔCE."""
    return f"ΔCE, {kind} patch"


def budget_comparison(runs: Mapping[str, Mapping], train_windows: int) -> pd.DataFrame:
    """Long rows for a budget study: per (predictor entry, layer) its training (``steps``: the budget, the
    cap; ``last_step``, ``kept_step``, ``passes`` over the ``train_windows`` training windows: windows drawn,
    ``last_step`` x the entry's ``batch_size``, over the pool, since the curve's ``windows_seen`` counts
    distinct windows and stops at the pool; the train loss and val MSE at the kept evaluation) and per metric
    its value with the 95 % interval: eval R² on all rows and without outliers, the best baseline's R² under
    both (kind ``baseline``, for the figure's reference lines), the probe gaps of :data:`BUDGET_GAPS` and,
    with interventions, the ΔCE of the ``hhat`` and ``mean`` patches.

    ``runs``: entry name -> {kind, steps, batch_size, summary (layer_summary.tsv), curves ({layer:
    curve.parquet}), differences ({task: <task>_differences.tsv}), patching (patching.tsv or None)}.
    """
    rows = []
    for name, run in runs.items():
        summary = pd.read_csv(run["summary"], sep="\t", dtype={"layer": str}).set_index("layer")
        gaps = [(metric, probe_gap(pd.read_csv(run["differences"][task], sep="\t", dtype={"layer": str}), a, b))
                for task, a, b, metric in BUDGET_GAPS if task in run["differences"]]
        patches = pooled_delta_ce(pd.read_csv(run["patching"], sep="\t")) if run.get("patching") else None
        for layer, curve_path in run["curves"].items():
            curve = pd.read_parquet(curve_path)
            kept = curve[curve["kept"]].iloc[0]  # the evaluation whose weights were kept (train.CURVE_COLUMNS)
            last_step = int(curve["step"].max())
            training = {"predictor": name, "kind": run["kind"], "steps": run["steps"], "layer": layer,
                        "last_step": last_step, "kept_step": int(kept["step"]),
                        "passes": last_step * run["batch_size"] / train_windows,
                        "kept_train_loss": float(kept["train_loss"]), "kept_val_mse": float(kept["val_mse"])}
            row = summary.loc[layer]
            for metric, prefix in (("eval R²", ""), ("eval R², no outliers", "no_outliers_")):
                rows.append({**training, "metric": metric, "value": row[f"{prefix}r2"],
                             "lo": row.get(f"{prefix}r2_lo", np.nan), "hi": row.get(f"{prefix}r2_hi", np.nan)})
                best = row.get(f"{prefix}best_baseline")
                if isinstance(best, str):
                    column = f"{prefix}r2_{best}"
                    rows.append({**training, "kind": "baseline", "baseline": best, "metric": metric,
                                 "value": row[column], "lo": row.get(f"{column}_lo", np.nan),
                                 "hi": row.get(f"{column}_hi", np.nan)})
            for metric, gap in gaps:
                if layer in gap.index:
                    rows.append({**training, "metric": metric, **gap.loc[layer, ["value", "lo", "hi"]].to_dict()})
            for kind in ("hhat", "mean"):
                if patches is not None and (layer, kind) in patches.index:
                    patch = patches.loc[(layer, kind)]
                    rows.append({**training, "metric": patch_metric(kind), "value": patch["mean"],
                                 "lo": patch["low"], "hi": patch["high"]})
    table = pd.DataFrame(rows)
    if "baseline" not in table:
        table["baseline"] = None
    return table[["predictor", "kind", "steps", "layer", "metric", "value", "lo", "hi", "baseline", "last_step",
                  "kept_step", "passes", "kept_train_loss", "kept_val_mse"]]


def write_budget_comparison(budgets: Mapping[str, int], kinds: Mapping[str, str], batch_sizes: Mapping[str, int],
                            layers, tasks, patterns: Mapping[str, str], interventions: bool,
                            train_windows_path: str, out_path: str) -> None:
    """The budget_comparison rule: every predictor entry's tables, found by ``patterns`` (fields
    ``{predictor}``, ``{layer}``, ``{task}``), compared by :func:`budget_comparison` over the training
    windows the predictors drew from (the rows of ``train_windows_path``)."""
    import pyarrow.parquet as pq

    runs = {}
    for name, steps in budgets.items():
        paths = {kind: pattern.replace("{predictor}", name) for kind, pattern in patterns.items()}
        runs[name] = {"kind": kinds[name], "steps": steps, "batch_size": batch_sizes[name], "summary": paths["summary"],
                      "curves": {str(layer): paths["curve"].format(layer=layer) for layer in layers},
                      "differences": {task: paths["differences"].format(task=task) for task in tasks},
                      "patching": paths["patching"] if interventions else None}
    train_windows = pq.ParquetFile(train_windows_path).metadata.num_rows
    storage.write_tsv(budget_comparison(runs, train_windows), out_path)
