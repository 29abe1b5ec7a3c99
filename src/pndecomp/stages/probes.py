"""The probe stages: a task's probe on one layer, and the task's table over layers (with its control and
selectivity). Nothing here imports torch (seconds per job, for 20+ jobs per run): the probe features are
read as numpy arrays."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
from safetensors.numpy import load_file

from .. import bootstrap, probes, storage, tasks
from ..representations import REPRESENTATIONS

log = logging.getLogger(__name__)


# Paired differences of test macro-F1 reported per layer: (representation a, representation b), a − b.
DIFFERENCES = (("hhat", "r"), ("hhat", "h"), ("hhat", "h_mean"))

# Per-layer columns for pairing a task with its control in probe_table, left out of the task's TSV.
SAMPLES, TEST_ROWS = "test_macro_f1_samples", "test_rows_sha1"


def rows_digest(window_ids, units) -> str:
    """sha1 of the ordered (window id, bootstrap unit) pairs of a probe's test rows: equal digests (with
    equal seed and resample count) mean equal resamples, so two probes' bootstrap samples pair up."""
    text = "\n".join(f"{window_id}\t{unit}" for window_id, unit in zip(window_ids, units))
    return hashlib.sha1(text.encode()).hexdigest()


def fit_probe(config: Mapping, task_name: str, probe_windows_path: str, features_path: str, out_path: str,
              out_differences: str) -> None:
    """Test macro/micro-F1 of one task's probe on each representation of one layer, with 95 % intervals
    of test macro-F1 from a bootstrap of the test windows by split unit (:data:`bootstrap.UNIT`, the
    near-duplicate group: the fitted probes' test predictions rescored, no refit), and the paired
    differences ĥ − r, ĥ − h, ĥ − h_mean from the same resamples. ``metrics.bootstrap: 0`` leaves the
    interval columns NaN.

    ``n_test_documents`` (the name kept) counts the bootstrap units of the test windows, i.e. the
    near-duplicate groups, which are single documents where a document has no near-duplicate. Two
    columns serve :func:`probe_table`'s paired selectivity interval: ``test_macro_f1_samples``, the
    test macro-F1 of every resample (empty without a bootstrap), and ``test_rows_sha1``
    (:func:`rows_digest` of the test rows)."""
    task = tasks.get(task_name)
    frame = pd.read_parquet(probe_windows_path, columns=["window_id", bootstrap.UNIT, "split", task.label_column,
                                                         f"in_{task.name}"])
    features = load_file(features_path)
    member = frame[f"in_{task.name}"].to_numpy()
    rows_of = {split: np.flatnonzero(member & (frame["split"] == split).to_numpy()) for split in
               ("probe_train", "probe_val", "probe_test")}
    labels = frame[task.label_column].to_numpy()
    y_test = labels[rows_of["probe_test"]]
    # Every representation is rescored on the same resamples of the test units: paired differences.
    test_units = frame[bootstrap.UNIT].to_numpy()[rows_of["probe_test"]]
    digest = rows_digest(frame["window_id"].to_numpy()[rows_of["probe_test"]], test_units)
    group_of_row, n_units = bootstrap.groups_of(test_units)
    n_resamples = config["metrics"]["bootstrap"]
    counts = bootstrap.resample_counts(n_units, n_resamples, config["seed"]) if n_resamples else None
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
        samples[name] = np.zeros(0)
        if counts is not None:
            samples[name] = probes.resampled_macro_f1(y_test, predictions, macro_labels, group_of_row, counts)
            low, high = map(float, bootstrap.interval(samples[name]))
        rows.append({"task": task.name, "representation": name, **result, "test_macro_f1_lo": low,
                     "test_macro_f1_hi": high, "n_test_documents": n_units, "n_resamples": n_resamples,
                     SAMPLES: samples[name].tolist(), TEST_ROWS: digest})
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
                            "n_test_documents": n_units, "n_resamples": n_resamples})
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


class UnpairedControl(ValueError):
    """A task and its control task were bootstrapped over different test rows or resamples, so their
    resamples do not pair up and the selectivity interval cannot be computed."""


def _seed_of(path) -> object:
    """The seed in a per-layer table's provenance (:func:`pndecomp.storage.provenance`), None without one."""
    return storage.parquet_metadata(path).get("seed")


def _check_pairing(table: pd.DataFrame, control: pd.DataFrame, paths: Mapping[str, str],
                   control_paths: Mapping[str, str]) -> None:
    """Fail unless, at every layer, the task and its control resampled the same test rows the same way:
    equal :func:`rows_digest`, resample count and seed (what :func:`bootstrap.resample_counts` is
    a function of, with the number of units the digest fixes)."""
    for layer in dict.fromkeys(table["layer"]):
        ours, theirs = table[table["layer"] == layer], control[control["layer"] == layer]
        if theirs.empty:
            raise UnpairedControl(f"layer {layer}: the control task has no probe table")
        for name, frame in (("task", ours), ("control task", theirs)):
            if any(column not in frame or frame[column].isna().any() for column in (SAMPLES, TEST_ROWS)):
                raise UnpairedControl(f"layer {layer}: the {name}'s probe table has no {SAMPLES} or {TEST_ROWS}: it "
                                      "predates the paired selectivity interval; rebuild it with "
                                      "`snakemake -R fit_probe`")
        checks = [("test rows (sha1 of window ids and bootstrap units)", set(ours[TEST_ROWS]), set(theirs[TEST_ROWS])),
                  ("resample count", set(ours["n_resamples"]), set(theirs["n_resamples"]))]
        seeds = (_seed_of(paths[layer]), _seed_of(control_paths[layer]))
        if None not in seeds:  # tables written without provenance (by hand) have no seed to compare
            checks.append(("seed", {seeds[0]}, {seeds[1]}))
        for what, a, b in checks:
            if a != b or len(a) != 1:
                raise UnpairedControl(
                    f"layer {layer}: task {ours['task'].iloc[0]!r} and its control {theirs['task'].iloc[0]!r} were "
                    f"bootstrapped with different {what} ({sorted(map(str, a))} vs {sorted(map(str, b))}), so their "
                    "resamples do not pair up; a control must probe exactly its base task's windows (rebuild both "
                    "with `snakemake -R fit_probe`)")


def probe_table(paths: Mapping[str, str], out_path: str, difference_paths: Mapping[str, str] | None = None,
                out_differences: str | None = None, control_paths: Mapping[str, str] | None = None) -> None:
    """Stack one task's per-layer probe tables into one TSV (layer column first), in config layer order,
    and its per-layer paired differences (:func:`fit_probe`) into a second TSV.

    With ``control_paths`` (the per-layer tables of the task's control task) the table also gets
    ``control_task``, ``control_test_macro_f1`` and ``selectivity`` = test_macro_f1 − control_test_macro_f1
    per (layer, representation) cell (Hewitt & Liang 2019), with its 95 % paired bootstrap interval
    ``selectivity_lo``/``_hi``: a control probes exactly its base task's windows, so both probes' test
    macro-F1 were rescored on the same resamples of the same test units, and the interval is the
    percentile interval of the per-resample differences (NaN with ``metrics.bootstrap: 0``). The pairing
    is checked (:func:`_check_pairing`: :class:`UnpairedControl` if the test rows, resample count or seed
    differ). The per-resample samples and the test-row digest stay in the per-layer files, not the TSV.
    """
    table = _stack_layers(paths)
    if control_paths:
        control = _stack_layers(control_paths)
        _check_pairing(table, control, paths, control_paths)
        control = control[["layer", "representation", "task", "test_macro_f1", SAMPLES]].rename(
            columns={"task": "control_task", "test_macro_f1": "control_test_macro_f1", SAMPLES: "_control_samples"})
        table = table.merge(control, on=["layer", "representation"], how="left", validate="one_to_one")
        table["selectivity"] = table["test_macro_f1"] - table["control_test_macro_f1"]
        bounds = []
        for ours, theirs in zip(table[SAMPLES], table["_control_samples"]):
            ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
            bounds.append(tuple(map(float, bootstrap.interval(ours - theirs))) if len(ours) else (np.nan, np.nan))
        table["selectivity_lo"], table["selectivity_hi"] = ([bound[i] for bound in bounds] for i in (0, 1))
        table = table.drop(columns=["_control_samples"])
    storage.write_tsv(table.drop(columns=[SAMPLES, TEST_ROWS], errors="ignore"), out_path)
    if out_differences is not None:
        storage.write_tsv(_stack_layers(difference_paths or {}), out_differences)
