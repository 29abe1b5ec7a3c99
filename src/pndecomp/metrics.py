"""Predictability metrics (docs/method.md §5): MSE, Var, R², per-position MSE and Spearman's ρ.

Inputs are often float16 hidden states; every reduction here runs in float64 so that
sums over millions of values neither overflow nor lose the small differences R² depends on.

Conventions (all pooled over rows, i.e. over windows × positions):
- ``mse`` = mean over rows of ‖t − p‖² / d  (the training loss);
- ``var`` = per-dimension variance of the target around its per-dimension mean (ddof = 0),
  averaged over dimensions;
- ``r2``  = 1 − mse / var = 1 − ΣSSE / ΣSST pooled over dimensions (sklearn's
  ``r2_score(..., multioutput="variance_weighted")``). NaN when the target is constant.
"""
from __future__ import annotations

import numpy as np
import scipy.stats

# Rows of float64 work per chunk in per_position_mse: bounds the float64 copy of an fp16
# [windows, positions, d] array (paper scale: 8,192 × 255 × 1,024) to a few hundred MiB.
_CHUNK_VALUES = 2**25


def _as_rows(array) -> np.ndarray:
    """[..., d] -> [rows, d] float64."""
    array = np.asarray(array, dtype=np.float64)
    return array.reshape(-1, array.shape[-1])


def _scores(sse: float, sst: float, n_values: int) -> dict:
    """The three numbers from pooled sums (n_values = rows × d)."""
    mse = sse / n_values
    var = sst / n_values
    r2 = 1.0 - sse / sst if sst > 0 else float("nan")
    return {"mse": float(mse), "var": float(var), "r2": float(r2)}


def regression_scores(target, prediction) -> dict:
    """{"mse", "var", "r2"} of ``prediction`` against ``target``, both [..., d]."""
    target, prediction = _as_rows(target), _as_rows(prediction)
    if target.shape != prediction.shape:
        raise ValueError(f"target {target.shape} and prediction {prediction.shape} differ")
    if target.shape[0] == 0:
        raise ValueError("no rows to score")
    sse = np.sum((target - prediction) ** 2)
    sst = np.sum((target - target.mean(axis=0)) ** 2)
    return _scores(sse, sst, target.size)


class RegressionAccumulator:
    """:func:`regression_scores` over batches, without keeping the batches.

    Keeps per-dimension count, mean and sum of squared deviations (M2) and merges each
    batch with Chan et al.'s parallel update, which avoids the cancellation of the naive
    Σx² − (Σx)²/n when the mean is large relative to the spread.
    """

    def __init__(self) -> None:
        self.n = 0  # rows seen
        self.mean: np.ndarray | None = None  # [d] running target mean
        self.m2: np.ndarray | None = None  # [d] Σ (t − mean)²
        self.sse: np.ndarray | None = None  # [d] Σ (t − p)²

    def update(self, target, prediction) -> None:
        target, prediction = _as_rows(target), _as_rows(prediction)
        if target.shape != prediction.shape:
            raise ValueError(f"target {target.shape} and prediction {prediction.shape} differ")
        n_b = target.shape[0]
        if n_b == 0:
            return
        mean_b = target.mean(axis=0)
        m2_b = np.sum((target - mean_b) ** 2, axis=0)
        sse_b = np.sum((target - prediction) ** 2, axis=0)
        if self.n == 0:
            self.n, self.mean, self.m2, self.sse = n_b, mean_b, m2_b, sse_b
            return
        if target.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"batch has d={target.shape[1]}, earlier batches d={self.mean.shape[0]}"
            )
        n = self.n + n_b
        delta = mean_b - self.mean
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
        self.mean = self.mean + delta * (n_b / n)
        self.sse = self.sse + sse_b
        self.n = n

    def result(self) -> dict:
        if self.n == 0:
            raise ValueError("no rows accumulated")
        return _scores(self.sse.sum(), self.m2.sum(), self.n * self.mean.shape[0])


def per_position_mse(residual) -> np.ndarray:
    """residual [n_windows, n_positions, d] -> [n_positions]: mean over windows of ‖r‖²/d."""
    residual = np.asarray(residual)
    if residual.ndim != 3:
        raise ValueError(f"residual must be [windows, positions, d], got shape {residual.shape}")
    n_windows, n_positions, d = residual.shape
    total = np.zeros(n_positions, dtype=np.float64)
    step = max(1, _CHUNK_VALUES // max(1, n_positions * d))
    for start in range(0, n_windows, step):
        chunk = residual[start : start + step].astype(np.float64)
        total += np.einsum("wpd,wpd->p", chunk, chunk)
    return total / (n_windows * d)


def spearman_per_position(x, y) -> np.ndarray:
    """Spearman's ρ between x and y across windows, per position.

    x, y: [n_windows, n_positions] (e.g. ‖r_p‖ and surprisal s_p). Ties get average ranks,
    as in ``scipy.stats.spearmanr``. NaN where either column is constant (ρ undefined);
    NaN inputs propagate to their column.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"x {x.shape} and y {y.shape} must be the same [windows, positions]")
    rx = scipy.stats.rankdata(x, axis=0)
    ry = scipy.stats.rankdata(y, axis=0)
    rx -= rx.mean(axis=0)
    ry -= ry.mean(axis=0)
    numerator = np.sum(rx * ry, axis=0)
    denominator = np.sqrt(np.sum(rx**2, axis=0) * np.sum(ry**2, axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = numerator / denominator
    rho[denominator == 0] = np.nan
    return np.clip(rho, -1.0, 1.0)  # rounding can step just past ±1


def position_slope(values, *, relative: bool = False) -> np.ndarray:
    """The least-squares slope of a per-position curve against relative position x = 0..1 (first to last
    position, evenly spaced): the change the fitted line makes across the window.

    values: [..., n_positions] (e.g. per-position MSE, or one curve per bootstrap resample) -> [...].
    ``relative``: the curve divided by its own mean first, so the slope is the change across the window as a
    fraction of the curve's mean (a scale-free trend for MSE, whose scale differs by layer). NaN positions
    (an undefined ρ) are left out of the fit; NaN when fewer than two positions remain.
    """
    values = np.asarray(values, dtype=np.float64)
    x = np.broadcast_to(np.linspace(0.0, 1.0, values.shape[-1]), values.shape)
    valid = ~np.isnan(values)
    count = valid.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if relative:
            values = values / (np.where(valid, values, 0.0).sum(axis=-1) / count)[..., None]
        x_mean = np.where(valid, x, 0.0).sum(axis=-1) / count
        y_mean = np.where(valid, values, 0.0).sum(axis=-1) / count
        dx = np.where(valid, x - x_mean[..., None], 0.0)
        dy = np.where(valid, values - y_mean[..., None], 0.0)
        slope = (dx * dy).sum(axis=-1) / (dx * dx).sum(axis=-1)
    return np.where(count >= 2, slope, np.nan)
