"""Bootstrap by the split unit (the intervals of every reported score).

Windows of one document are not independent (they share a topic, a style), and neither are the
documents of one near-duplicate group (``corpus.dedup``), which the splits keep together. So a
resample draws whole **split units** -- the windows table's :data:`UNIT` column, the near-duplicate
group, which is the document itself where a document has no duplicates -- with replacement, and
keeps every window of each drawn unit as many times as the unit was drawn. Every bootstrap of the
project (R², per-position bands, probe F1 and its differences, selectivity, patching and steering)
resamples this column; ``n_documents`` in the tables counts its distinct values.

Resamples are a pure function of (seed, number of units, number of resamples): every score of one
run is resampled the same way, so paired differences (predictor − baseline, ĥ − r) come from
matching resamples.

Intervals are percentile intervals (2.5 % and 97.5 % for 95 %).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

LEVEL = 0.95
# The windows tables' column a resample draws by: the unit the splits are made of (splits.split_of's key).
UNIT = "group"


def groups_of(keys: Sequence) -> tuple[np.ndarray, int]:
    """(group index of every row [rows], number of groups): rows with equal keys share a group,
    groups numbered in order of first appearance."""
    _, first, inverse = np.unique(np.asarray(keys, dtype=object).astype(str), return_index=True,
                                  return_inverse=True)
    order = np.argsort(np.argsort(first))  # unique() sorts keys; renumber by first appearance
    return order[inverse], len(first)


def resample_counts(n_groups: int, n_resamples: int, seed: int) -> np.ndarray:
    """[n_resamples, n_groups] int: how often each group is drawn when n_groups are drawn with replacement."""
    if n_groups < 1:
        raise ValueError("a bootstrap needs at least one group")
    rng = np.random.default_rng([seed, n_groups, n_resamples, 0xB007])
    draws = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    return np.stack([np.bincount(row, minlength=n_groups) for row in draws])


def resample_rows(group_of_row: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Row indices of one resample: every row of group g repeated counts[g] times (rows in order)."""
    return np.repeat(np.arange(len(group_of_row)), counts[group_of_row])


def grouped_sums(values: np.ndarray, group_of_row: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group sums of ``values`` [rows, ...] -> [n_groups, ...] (float64)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros((n_groups, *values.shape[1:]))
    np.add.at(out, group_of_row, values)
    return out


def interval(samples: np.ndarray, level: float = LEVEL, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval of bootstrap ``samples`` along ``axis``: NaN resamples are ignored, and
    NaN where no resample has a value (an undefined statistic, e.g. a constant column's ρ)."""
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        low, high = np.nanpercentile(np.asarray(samples, dtype=np.float64), [tail, 100 - tail], axis=axis)
    return low, high


def mean_with_intervals(values: np.ndarray, documents: Sequence, *, n_resamples: int = 1000, seed: int = 0,
                        level: float = LEVEL) -> pd.DataFrame:
    """Means of ``values`` [W, P] over windows, per position and pooled over positions, with
    split-unit bootstrap intervals (:mod:`pndecomp.bootstrap`; every window of a drawn document
    counts as often as it is drawn).

    Rows: scope "position" (one per column p, ``position`` = p + 1 is the column index, 1-based) then
    scope "pooled" (``position`` <NA>): the mean over all W × P values.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    group, n_groups = groups_of(documents)
    counts = resample_counts(n_groups, n_resamples, seed)
    sums = counts @ grouped_sums(values, group, n_groups)  # [B, P]
    n = counts @ grouped_sums(np.ones(len(values)), group, n_groups)  # [B] windows per resample
    per_position = sums / n[:, None]
    pooled = sums.sum(axis=1) / (n * values.shape[1])
    low, high = interval(per_position, level)
    pooled_low, pooled_high = interval(pooled, level)
    frame = pd.DataFrame({
        "scope": ["position"] * values.shape[1] + ["pooled"],
        "position": pd.array(list(range(1, values.shape[1] + 1)) + [None], dtype="Int64"),
        "mean": np.append(values.mean(axis=0), values.mean()),
        "low": np.append(low, pooled_low), "high": np.append(high, pooled_high),
    })
    frame["n_windows"], frame["n_documents"] = len(values), n_groups
    return frame
