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
