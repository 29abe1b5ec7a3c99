"""Scores with context (numbers a reviewer can trust): the predictor's R² beside its baselines, with
split-unit bootstrap intervals, and robust views of where the squared error comes from.

Everything is computed from per-window sufficient statistics of the eval rows (positions 2..T of
every eval window), read batch by batch, so memory is one batch plus [windows, positions] arrays:

* n_w rows, their mean vector and M2_w = Σ ‖t − mean_w‖² per window: SST of any set of windows
  (a bootstrap resample is a weighted set) follows by Chan's merge, without a second pass;
* SSE_w of the predictor (Σ ‖r‖²) and of each baseline per window.

The robust views (rows without outliers, late positions) are the same statistics over the rows a
mask keeps (:class:`MaskedWindowStats`), so the predictor and every baseline are compared under the
same mask with the same intervals and paired differences.

R² = 1 − ΣSSE/ΣSST pooled over rows and dimensions, exactly as :mod:`pndecomp.metrics`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from . import bootstrap


class WindowStats:
    """Per-window sums of the eval rows, and per-row norms for the robust views."""

    def __init__(self) -> None:
        self.n: list[np.ndarray] = []  # [W] rows per window
        self.mean: list[np.ndarray] = []  # [W, d]
        self.m2: list[np.ndarray] = []  # [W]
        self.target_norm: list[np.ndarray] = []  # [W, P] ‖h‖ of every target row
        self.input_norm: list[np.ndarray] = []  # [W, P] ‖h_t‖ of the last state each prediction of h_{t+1} sees
        self.residual_sq: list[np.ndarray] = []  # [W, P] ‖r‖² of every target row

    def update(self, hidden: torch.Tensor, residual: torch.Tensor) -> None:
        """hidden [batch, T, d] (targets are positions 2..T), residual [batch, T−1, d]."""
        target = hidden[:, 1:].double()
        mean = target.mean(dim=1)
        self.n.append(np.full(target.shape[0], target.shape[1], dtype=np.float64))
        self.mean.append(mean.numpy())
        self.m2.append(((target - mean[:, None]) ** 2).sum(dim=(1, 2)).numpy())
        norms = hidden.double().norm(dim=-1)  # every position's ‖h‖: positions 2..T are targets, 1..T−1 inputs
        self.target_norm.append(norms[:, 1:].numpy())
        self.input_norm.append(norms[:, :-1].numpy())
        self.residual_sq.append((residual.double() ** 2).sum(dim=-1).numpy())

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.concatenate(getattr(self, name))
                for name in ("n", "mean", "m2", "target_norm", "input_norm", "residual_sq")}


def weighted_sst(weights: np.ndarray, n: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """SST of sets of windows: ``weights`` [sets, W] (how often each window counts) -> [sets].

    Chan's merge: Σ c·M2_w + Σ c·n_w ‖mean_w − μ‖², with μ the set's own mean; the means are first
    centred on the all-window mean, which keeps the between-window term free of cancellation.
    """
    centre = (n @ mean) / n.sum()
    shifted = mean - centre
    rows = weights * n  # [sets, W]
    total = rows.sum(axis=1)
    set_mean = rows @ shifted / total[:, None]
    between = rows @ (shifted ** 2).sum(axis=1) - total * (set_mean ** 2).sum(axis=1)
    return weights @ m2 + between


def r2_with_intervals(sse: Mapping[str, np.ndarray], n: np.ndarray, mean: np.ndarray, m2: np.ndarray,
                      documents: np.ndarray, n_resamples: int, seed: int) -> dict:
    """Pooled R² of every model (``sse``: name -> [W] per-window SSE) with 95 % intervals from a
    bootstrap over split units (``documents``: each window's unit, :mod:`pndecomp.bootstrap`), plus the
    paired difference between the first model and the best of the others (by point R²), from the same
    resamples."""
    point_sst = weighted_sst(np.ones((1, len(n))), n, mean, m2)[0]
    point = {name: 1.0 - values.sum() / point_sst for name, values in sse.items()}
    first, *others = sse
    best = max(others, key=point.__getitem__) if others else None
    result = {"models": {name: {"r2": point[name], "mse": float(values.sum() / (n.sum() * mean.shape[1]))}
                         for name, values in sse.items()},
              "best_baseline": best,
              "difference": {"of": first, "minus": best,
                             "r2": point[first] - point[best] if best else math.nan},
              "n_windows": len(n), "n_rows": int(n.sum())}
    group, n_groups = bootstrap.groups_of(documents)
    result["n_documents"] = n_groups
    if n_resamples == 0:
        return result
    weights = bootstrap.resample_counts(n_groups, n_resamples, seed)[:, group]  # [B, W]
    sst = weighted_sst(weights, n, mean, m2)
    samples = {name: 1.0 - weights @ values / sst for name, values in sse.items()}
    for name in sse:
        low, high = bootstrap.interval(samples[name])
        result["models"][name].update(r2_lo=float(low), r2_hi=float(high))
    if best:
        low, high = bootstrap.interval(samples[first] - samples[best])
        result["difference"].update(r2_lo=float(low), r2_hi=float(high))
    return result


def tail(residual_sq: np.ndarray, share: float = 0.01) -> float:
    """The share of the total SSE that the worst ``share`` of rows ([W, P] ‖r‖²) make up."""
    values = np.sort(residual_sq.ravel())[::-1]
    n_worst = max(1, math.ceil(share * len(values)))
    return float(values[:n_worst].sum() / values.sum())


def worst_rows(residual_sq: np.ndarray, n_rows: int) -> list[tuple[int, int]]:
    """(window, target row) of the ``n_rows`` rows with the largest ‖r‖², largest first."""
    flat = np.argsort(residual_sq.ravel(), kind="stable")[::-1][:n_rows]
    return [tuple(int(i) for i in np.unravel_index(index, residual_sq.shape)) for index in flat]


class MaskedWindowStats:
    """Per mask, the per-window statistics of :class:`WindowStats` over the target rows the mask keeps
    (``masks``: name -> [W, P] bool over positions 2..T), all masks in one pass over the eval states.
    A window with no kept row has n_w = 0 (its mean is 0 and weighs nothing)."""

    def __init__(self, masks: Mapping[str, np.ndarray]) -> None:
        self.masks = masks
        self.parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {name: [] for name in masks}
        self.offset = 0

    def update(self, hidden: torch.Tensor) -> None:
        """hidden [batch, T, d]: the next windows in eval order."""
        target = hidden[:, 1:].double().numpy()
        for name, keep in self.masks.items():
            kept = keep[self.offset:self.offset + len(target)]
            n = kept.sum(axis=1).astype(np.float64)
            mean = (target * kept[..., None]).sum(axis=1) / np.maximum(n, 1.0)[:, None]
            m2 = (((target - mean[:, None]) ** 2).sum(axis=-1) * kept).sum(axis=1)
            self.parts[name].append((n, mean, m2))
        self.offset += len(target)

    def arrays(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n [W], mean [W, d], m2 [W]) of one mask, the inputs of :func:`r2_with_intervals`."""
        return tuple(np.concatenate(column) for column in zip(*self.parts[name]))
