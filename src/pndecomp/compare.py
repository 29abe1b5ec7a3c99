"""Comparisons across predictors: R² with intervals per (predictor, layer) beside the baselines, and
what each predictor costs (parameters, training seconds). Torch-free: it reads small metric files."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from . import storage
from .figures import summary_models


def predictor_comparison(summaries: Mapping[str, str], weights: Mapping[str, Mapping[str, str]],
                         curves: Mapping[str, Mapping[str, str]]) -> pd.DataFrame:
    """One row per (model, layer): every predictor's eval R² with its interval, its parameter count, its
    training seconds (per 1,000 steps for SGD predictors; a closed-form fit has one step) and R² per
    million parameters, then the baselines (kind "baseline"), taken from the first predictor's summary:
    they are fit once per layer and scored on the same windows for every predictor."""
    frames = []
    for index, (name, path) in enumerate(summaries.items()):
        summary = pd.read_csv(path, sep="\t", dtype={"layer": str})
        models = summary_models(summary, predictor=name)
        keep = (models["kind"] == "predictor") | (index == 0)
        models = models[keep].copy()
        n_windows = dict(zip(summary["layer"], summary["n_windows"]))
        models["n_windows"] = models["layer"].map(n_windows)
        mine = models["kind"] == "predictor"
        models.loc[mine, "parameters"] = [storage.parameter_count(weights[name][layer])
                                          for layer in models.loc[mine, "layer"]]
        seconds, steps = zip(*(_training_cost(curves[name][layer]) for layer in models.loc[mine, "layer"]))
        models.loc[mine, "train_seconds"] = seconds
        models.loc[mine, "train_steps"] = steps
        frames.append(models)
    table = pd.concat(frames, ignore_index=True)
    table["seconds_per_1000_steps"] = table["train_seconds"] / table["train_steps"] * 1000
    table["r2_per_million_parameters"] = table["r2"] / (table["parameters"] / 1e6)
    order = ["model", "kind", "layer", "r2", "r2_lo", "r2_hi", "n_windows", "parameters", "train_seconds",
             "train_steps", "seconds_per_1000_steps", "r2_per_million_parameters"]
    return table[order]


def _training_cost(curve_path: str) -> tuple[float, float]:
    """(seconds spent training, steps) from a predictor's curve: its last row's train_seconds and step;
    NaN seconds for a curve written before training was timed."""
    curve = pd.read_parquet(curve_path)
    last = curve.iloc[-1]
    seconds = float(last["train_seconds"]) if "train_seconds" in curve else np.nan
    return seconds, float(max(last["step"], 1))
