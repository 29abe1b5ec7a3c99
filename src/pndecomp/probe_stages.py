"""One function per probe rule (a task's probe on one layer, the task's table over layers): read the
rule's inputs, call the package, write its outputs.

Like :mod:`pndecomp.stages`, everything here runs (and is tested) without Snakemake. Nothing here imports
torch (seconds per job, for 20+ jobs per run): the probe features are read as numpy arrays.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
from safetensors.numpy import load_file

from . import bootstrap, probes, storage, tasks
from .representations import REPRESENTATIONS

log = logging.getLogger(__name__)


# Paired differences of test macro-F1 reported per layer: (representation a, representation b), a − b.
DIFFERENCES = (("hhat", "r"), ("hhat", "h"), ("hhat", "h_mean"))


def fit_probe(config: Mapping, task_name: str, probe_windows_path: str, features_path: str, out_path: str,
              out_differences: str) -> None:
    """Test macro/micro-F1 of one task's probe on each representation of one layer, with 95 % intervals
    of test macro-F1 from a document-level bootstrap of the test windows (the fitted probes' test
    predictions rescored, no refit), and the paired differences ĥ − r, ĥ − h, ĥ − h_mean from the
    same resamples. ``metrics.bootstrap: 0`` leaves the interval columns NaN."""
    task = tasks.get(task_name)
    frame = pd.read_parquet(probe_windows_path, columns=["doc_id", "split", task.label_column, f"in_{task.name}"])
    features = load_file(features_path)
    member = frame[f"in_{task.name}"].to_numpy()
    rows_of = {split: np.flatnonzero(member & (frame["split"] == split).to_numpy()) for split in
               ("probe_train", "probe_val", "probe_test")}
    labels = frame[task.label_column].to_numpy()
    y_test = labels[rows_of["probe_test"]]
    # Every representation is rescored on the same resamples of the test documents: paired differences.
    group_of_row, n_docs = bootstrap.groups_of(frame["doc_id"].to_numpy()[rows_of["probe_test"]])
    n_resamples = config["metrics"]["bootstrap"]
    counts = bootstrap.resample_counts(n_docs, n_resamples, config["seed"]) if n_resamples else None
    rows, point, samples = [], {}, {}
    for name, representation in REPRESENTATIONS.items():
        try:
            x = representation.build(features)
        except KeyError as missing:
            raise KeyError(f"{features_path} has no tensor {missing} for representation {name!r}: it predates "
                           "that representation; rebuild it with `snakemake -R probe_features`") from missing
        result = probes.fit_and_score(*(array for split in ("probe_train", "probe_val", "probe_test")
                                        for array in (x[rows_of[split]], labels[rows_of[split]])),
                                      c_grid=tuple(config["probes"]["c_grid"]), seed=config["seed"],
                                      max_iter=config["probes"]["max_iter"],
                                      min_test_per_class=config["probes"]["min_test_per_class"])
        predictions, macro_labels = result.pop("test_predictions"), result.pop("test_macro_labels")
        point[name] = result["test_macro_f1"]
        low = high = np.nan
        if counts is not None:
            samples[name] = probes.resampled_macro_f1(y_test, predictions, macro_labels, group_of_row, counts)
            low, high = map(float, bootstrap.interval(samples[name]))
        rows.append({"task": task.name, "representation": name, **result, "test_macro_f1_lo": low,
                     "test_macro_f1_hi": high, "n_test_documents": n_docs, "n_resamples": n_resamples})
        log.info("%s %s: test macro-F1 %.4f [%.4f, %.4f]", task.name, name, result["test_macro_f1"], low, high)
    differences = []
    for a, b in DIFFERENCES:
        if a not in point or b not in point:
            continue
        low = high = np.nan
        if counts is not None:
            low, high = map(float, bootstrap.interval(samples[a] - samples[b]))
        differences.append({"task": task.name, "representation_a": a, "representation_b": b,
                            "difference": point[a] - point[b], "difference_lo": low, "difference_hi": high,
                            "n_test_documents": n_docs, "n_resamples": n_resamples})
    # The features file's metadata is stages.output_metadata(config) plus the layer (and how it was taken):
    # the model's identity comes from there, as output_metadata would import torch (through lm) and hash
    # the weights again. The stored keys are output_metadata(config, layer=layer)'s.
    features_metadata = storage.load_metadata(features_path)
    layer = features_metadata["layer"]
    metadata = storage.provenance(experiment=config["experiment"], seed=config["seed"],
                                  model=features_metadata["model"], layer=layer)
    storage.write_parquet(pd.DataFrame(rows).assign(layer=str(layer)), out_path, metadata)
    storage.write_parquet(pd.DataFrame(differences).assign(layer=str(layer)), out_differences, metadata)


def _stack_layers(paths: Mapping[str, str]) -> pd.DataFrame:
    """Per-layer parquet tables stacked, ``layer`` column first (the keys of ``paths``), in their order."""
    frames = [pd.read_parquet(path).drop(columns=["layer"], errors="ignore").assign(layer=layer)
              for layer, path in paths.items()]
    table = pd.concat(frames, ignore_index=True)
    return table[["layer", *[c for c in table.columns if c != "layer"]]]


def probe_table(paths: Mapping[str, str], out_path: str, difference_paths: Mapping[str, str] | None = None,
                out_differences: str | None = None, control_paths: Mapping[str, str] | None = None) -> None:
    """Stack one task's per-layer probe tables into one TSV (layer column first), in config layer order,
    and its per-layer paired differences (:func:`fit_probe`) into a second TSV.

    With ``control_paths`` (the per-layer tables of the task's control task) the table also gets
    ``control_task``, ``control_test_macro_f1`` and ``selectivity`` = test_macro_f1 − control_test_macro_f1
    per (layer, representation) cell (Hewitt & Liang 2019): a point value, as the two tasks' test windows
    differ and their resamples are not paired.
    """
    table = _stack_layers(paths)
    if control_paths:
        control = _stack_layers(control_paths)[["layer", "representation", "task", "test_macro_f1"]].rename(
            columns={"task": "control_task", "test_macro_f1": "control_test_macro_f1"})
        table = table.merge(control, on=["layer", "representation"], how="left", validate="one_to_one")
        table["selectivity"] = table["test_macro_f1"] - table["control_test_macro_f1"]
    storage.write_tsv(table, out_path)
    if out_differences is not None:
        storage.write_tsv(_stack_layers(difference_paths or {}), out_differences)
