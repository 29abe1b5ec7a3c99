"""Baselines for the predictor's R² (what a reviewer compares the attention predictor with).

Every baseline predicts the same rows as the predictor: positions 2..T of each window, i.e.
``predict(hidden)`` [n, T, d] -> [n, T-1, d] is aligned with ``hidden[:, 1:]`` and row t
(0-based) is the prediction ĥ of ``hidden[:, t + 1]`` made from ``hidden[:, :t + 1]`` (and,
for the fitted baselines, from the train windows). Interface (scikit-learn style):

- ``fit(batches)``: ``batches`` is an iterable of [n_windows, T, d] hidden-state tensors or
  arrays (the predictor_train windows), read once, one batch at a time; only O((k·d)²)
  statistics are kept, never the batches. A single 3-D array/tensor is taken as one batch.
  Returns the baseline.
- ``predict(hidden)``: [n, T, d] -> float64 numpy array [n, T-1, d].

Baselines (names as accepted by :func:`make_baseline`):

- ``mean``: the train mean of h over positions 2..T of every train window (the rows it predicts;
  position 1 holds the attention-sink state, many times the median ‖h‖, and is never a target);
- ``persistence``: ĥ_{t+1} = h_t;
- ``context_mean``: ĥ_{t+1} = mean(h_1..h_t), the running mean within the window, position 1
  included (what "the mean of the context" says);
- ``context_mean_from2``: ĥ_{t+1} = mean(h_2..h_t), the same running mean without position 1, so
  the sink state does not dominate it; the row predicting h_2 has no context after position 1 and
  takes the ``mean`` baseline's train mean (the only fitted part);
- ``ridge_ar<k>`` (k ≥ 1): ĥ_{t+1} = Σ_{j<k} A_j h_{t−j} + b, ridge regression on the last k
  states. Lags before position 1 are zero: every row 2..T is predicted, the first k−1 rows
  of a window with zero-padded lags (so the scored rows are exactly the predictor's).
  The intercept b is not penalised (the regression runs on centred statistics).
  λ = α · mean diagonal of the centred XᵀX, α from ``alphas`` (default 1e-6 … 1e2, one per
  decade) chosen by held-out SSE on every ``holdout_every``-th train window (global window
  index i with i % holdout_every == holdout_every − 1, counted across batches, so the split
  does not depend on how the windows are batched); the held-out SSE comes from the held-out
  windows' own sufficient statistics, so the data is read once. The model is then refit on
  train + held-out statistics with the chosen α (λ rescaled to the pooled XᵀX).

:func:`score` scores a fitted baseline with :class:`pndecomp.metrics.RegressionAccumulator`
on exactly the predictor's rows (``target = hidden[:, 1:]``), so baselines and predictor go
through the same metric code.

Everything is computed in float64 (inputs may be float16/bfloat16 torch tensors).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import numpy as np
import scipy.linalg

from .metrics import RegressionAccumulator
from .predictor_kinds import DEFAULT_HOLDOUT_EVERY, RIDGE_ALPHAS

# float64 values per chunk of lag features (bounds the float64 copies of one batch).
_CHUNK_VALUES = 2**24


def _hidden(batch) -> np.ndarray:
    """A [n, T, d] tensor/array as float64 numpy (torch tensors of any dtype and device)."""
    if hasattr(batch, "detach"):  # torch.Tensor, without importing torch here
        import torch

        batch = batch.detach().to(device="cpu", dtype=torch.float64).numpy()
    array = np.asarray(batch, dtype=np.float64)
    if array.ndim != 3:
        raise ValueError(f"hidden states must be [windows, positions, d], got shape {array.shape}")
    if array.shape[1] < 2:
        raise ValueError(f"windows need at least 2 positions to predict one, got T={array.shape[1]}")
    return array


def _batches(batches) -> Iterable:
    """A single [n, T, d] array/tensor counts as one batch; anything else is iterated."""
    if getattr(batches, "ndim", None) == 3:
        return (batches,)
    return batches


class Baseline:
    """Common interface; subclasses set ``name`` and implement ``predict`` (and ``fit`` if fitted)."""

    name = "baseline"

    def fit(self, batches) -> Baseline:
        """Nothing to learn (persistence, context_mean): the batches are not even read."""
        return self

    def predict(self, hidden) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class MeanBaseline(Baseline):
    """ĥ = the train mean of h over positions 2..T of every window: the rows every baseline predicts.
    Position 1 is left out because it is never predicted, and it holds the attention-sink state, whose
    norm would pull the mean away from every scored row (R² −0.9 instead of ≈ 0 at SmolLM2's block 15)."""

    name = "mean"

    def __init__(self) -> None:
        self.mean_: np.ndarray | None = None
        self.n_rows_ = 0

    def fit(self, batches) -> MeanBaseline:
        total, count = None, 0
        for batch in _batches(batches):
            hidden = _hidden(batch)
            rows = hidden[:, 1:].reshape(-1, hidden.shape[-1])
            if total is None:
                total = np.zeros(rows.shape[1])
            elif rows.shape[1] != total.shape[0]:
                raise ValueError(f"batch has d={rows.shape[1]}, earlier batches d={total.shape[0]}")
            total += rows.sum(axis=0)
            count += rows.shape[0]
        if count == 0:
            raise ValueError("mean: no training windows")
        self.mean_, self.n_rows_ = total / count, count
        return self

    def predict(self, hidden) -> np.ndarray:
        if self.mean_ is None:
            raise RuntimeError("mean: call fit() before predict()")
        hidden = _hidden(hidden)
        n, t, d = hidden.shape
        if d != self.mean_.shape[0]:
            raise ValueError(f"mean: fitted on d={self.mean_.shape[0]}, got d={d}")
        return np.broadcast_to(self.mean_, (n, t - 1, d)).copy()


class PersistenceBaseline(Baseline):
    """ĥ_{t+1} = h_t."""

    name = "persistence"

    def predict(self, hidden) -> np.ndarray:
        return _hidden(hidden)[:, :-1].copy()


class ContextMeanBaseline(Baseline):
    """ĥ_{t+1} = mean(h_1..h_t), the running mean within the window."""

    name = "context_mean"

    def predict(self, hidden) -> np.ndarray:
        past = _hidden(hidden)[:, :-1]
        counts = np.arange(1, past.shape[1] + 1, dtype=np.float64)[None, :, None]
        return np.cumsum(past, axis=1) / counts


class ContextMeanFrom2Baseline(MeanBaseline):
    """ĥ_{t+1} = mean(h_2..h_t); ĥ_2 = the train mean of positions 2..T (no context after position 1)."""

    name = "context_mean_from2"

    def predict(self, hidden) -> np.ndarray:
        first = super().predict(hidden)[:, :1]  # checks fit() and d
        after_first = _hidden(hidden)[:, 1:-1]
        counts = np.arange(1, after_first.shape[1] + 1, dtype=np.float64)[None, :, None]
        return np.concatenate([first, np.cumsum(after_first, axis=1) / counts], axis=1)


def lag_features(hidden, k: int) -> np.ndarray:
    """[n, T, d] -> [n, T-1, k·d]: row t is (h_t, h_{t−1}, …, h_{t−k+1}), zero before position 1."""
    hidden = _hidden(hidden)
    n, t, d = hidden.shape
    past = hidden[:, :-1]
    features = np.zeros((n, t - 1, k * d))
    for lag in range(min(k, t - 1)):
        features[:, lag:, lag * d : (lag + 1) * d] = past[:, : t - 1 - lag]
    return features


class _Moments:
    """Centred sufficient statistics of rows (x, y) for a least-squares fit, merged chunk by chunk
    with Chan et al.'s parallel update (no Σx² − (Σx)²/n cancellation when means are large).

    n: rows; mean_x [p], mean_y [d]; cxx = Σ(x−x̄)(x−x̄)ᵀ [p, p]; cxy = Σ(x−x̄)(y−ȳ)ᵀ [p, d];
    syy = Σ‖y−ȳ‖² (only the trace of YᵀY is needed for SSE).
    """

    def __init__(self, p: int, d: int) -> None:
        self.n = 0
        self.mean_x, self.mean_y = np.zeros(p), np.zeros(d)
        self.cxx, self.cxy = np.zeros((p, p)), np.zeros((p, d))
        self.syy = 0.0

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
        xc, yc = x - mean_x, y - mean_y
        self._merge(n_b, mean_x, mean_y, xc.T @ xc, xc.T @ yc, float(np.sum(yc * yc)))

    def _merge(self, n_b, mean_x, mean_y, cxx, cxy, syy) -> None:
        if self.n == 0:
            self.n, self.mean_x, self.mean_y, self.cxx, self.cxy, self.syy = n_b, mean_x, mean_y, cxx, cxy, syy
            return
        n = self.n + n_b
        weight = self.n * n_b / n
        dx, dy = mean_x - self.mean_x, mean_y - self.mean_y
        self.cxx = self.cxx + cxx + weight * np.outer(dx, dx)
        self.cxy = self.cxy + cxy + weight * np.outer(dx, dy)
        self.syy = self.syy + syy + weight * float(dy @ dy)
        self.mean_x = self.mean_x + dx * (n_b / n)
        self.mean_y = self.mean_y + dy * (n_b / n)
        self.n = n

    def merged(self, other: _Moments) -> _Moments:
        out = _Moments(0, 0)
        out._merge(self.n, self.mean_x, self.mean_y, self.cxx, self.cxy, self.syy)
        out._merge(other.n, other.mean_x, other.mean_y, other.cxx, other.cxy, other.syy)
        return out

    def sse(self, coef: np.ndarray, intercept: np.ndarray) -> float:
        """Σ‖y − (Wᵀx + b)‖² over these rows, from the statistics alone:
        tr(S_yy) − 2 tr(WᵀS_xy) + tr(WᵀS_xxW) + n‖ȳ − b − Wᵀx̄‖² (the cross terms vanish after centring)."""
        offset = self.mean_y - intercept - self.mean_x @ coef
        value = self.syy - 2.0 * np.sum(coef * self.cxy) + np.sum(coef * (self.cxx @ coef))
        return float(max(value, 0.0) + self.n * (offset @ offset))


def _ridge_path(moments: _Moments, alphas) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """[(λ, W [p, d], b [d])] for each α: (S_xx + λI) W = S_xy, b = ȳ − Wᵀx̄, λ = α·tr(S_xx)/p.

    One eigendecomposition serves the whole grid; at λ = 0 directions with a (numerically) zero
    eigenvalue are dropped, i.e. the minimum-norm least-squares solution.
    """
    p = moments.cxx.shape[0]
    scale = np.trace(moments.cxx) / p
    eigenvalues, eigenvectors = np.linalg.eigh(moments.cxx)
    projected = eigenvectors.T @ moments.cxy
    floor = max(eigenvalues.max(initial=0.0), 0.0) * p * np.finfo(np.float64).eps
    path = []
    for alpha in alphas:
        lam = float(alpha) * scale
        denominator = eigenvalues + lam
        inverse = 1.0 / np.where(denominator > floor, denominator, np.inf)
        coef = eigenvectors @ (projected * inverse[:, None])
        path.append((lam, coef, moments.mean_y - moments.mean_x @ coef))
    return path


def _ridge_solution(moments: _Moments, alpha: float) -> tuple[float, np.ndarray, np.ndarray]:
    """(λ, W, b) for one α, as :func:`_ridge_path` gives it; for α > 0 by a Cholesky solve, several
    times cheaper than the eigendecomposition the path shares across α."""
    if alpha == 0:
        return _ridge_path(moments, (alpha,))[0]
    p = moments.cxx.shape[0]
    lam = float(alpha) * np.trace(moments.cxx) / p
    coef = scipy.linalg.solve(moments.cxx + lam * np.eye(p), moments.cxy, assume_a="pos")
    return lam, coef, moments.mean_y - moments.mean_x @ coef


class RidgeARBaseline(Baseline):
    """ĥ_{t+1} = Σ_{j<k} A_j h_{t−j} + b by ridge regression (see the module docstring).

    After ``fit``: ``coef_`` [k·d, d] (rows j·d..(j+1)·d hold A_jᵀ; see :attr:`lag_matrices`),
    ``intercept_`` [d], ``alpha_`` (chosen relative penalty), ``lambda_`` (absolute λ of the
    final fit), ``grid_scores_`` (one dict per α: alpha, lambda, held-out mse and r2; empty
    when ``alphas`` has a single value and no held-out scoring was needed), ``n_train_rows_``,
    ``n_holdout_rows_``.
    """

    def __init__(self, k: int, alphas: Iterable[float] = RIDGE_ALPHAS,
                 holdout_every: int = DEFAULT_HOLDOUT_EVERY) -> None:
        if int(k) != k or k < 1:
            raise ValueError(f"ridge_ar: k must be an integer ≥ 1, got {k!r}")
        alphas = tuple(sorted(float(a) for a in alphas))
        if not alphas or any(not np.isfinite(a) or a < 0 for a in alphas):
            raise ValueError(f"ridge_ar: alphas must be a non-empty list of finite values ≥ 0, got {alphas!r}")
        if int(holdout_every) != holdout_every or holdout_every < 2:
            raise ValueError(f"ridge_ar: holdout_every must be an integer ≥ 2, got {holdout_every!r}")
        self.k, self.alphas, self.holdout_every = int(k), alphas, int(holdout_every)
        self.name = f"ridge_ar{self.k}"
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | None = None
        self.alpha_: float | None = None
        self.lambda_: float | None = None
        self.grid_scores_: list[dict] = []
        self.n_train_rows_ = self.n_holdout_rows_ = 0

    def _accumulate(self, batches) -> tuple[_Moments, _Moments]:
        train = held = None
        d = None
        next_window = 0
        for batch in _batches(batches):
            hidden = _hidden(batch)
            n, t, d_b = hidden.shape
            if d is None:
                d = d_b
                train, held = _Moments(self.k * d, d), _Moments(self.k * d, d)
            elif d_b != d:
                raise ValueError(f"{self.name}: batch has d={d_b}, earlier batches d={d}")
            index = next_window + np.arange(n)
            next_window += n
            is_held = index % self.holdout_every == self.holdout_every - 1
            step = max(1, _CHUNK_VALUES // ((t - 1) * (self.k + 1) * d))
            for moments, part in ((train, hidden[~is_held]), (held, hidden[is_held])):
                for start in range(0, part.shape[0], step):
                    chunk = part[start : start + step]
                    x = lag_features(chunk, self.k).reshape(-1, self.k * d)
                    moments.update(x, chunk[:, 1:].reshape(-1, d))
        if train is None or train.n + held.n == 0:
            raise ValueError(f"{self.name}: no training windows")
        return train, held

    def fit(self, batches) -> RidgeARBaseline:
        train, held = self._accumulate(batches)
        self.n_train_rows_, self.n_holdout_rows_ = train.n, held.n
        self.grid_scores_ = []
        if len(self.alphas) == 1:
            self.alpha_ = self.alphas[0]
        else:
            if train.n == 0 or held.n == 0:
                raise ValueError(
                    f"{self.name}: choosing λ needs held-out windows (every {self.holdout_every}th) and training "
                    f"windows; got {train.n} train and {held.n} held-out rows. Pass more windows, a smaller "
                    "holdout_every, or a single alpha."
                )
            n_values = held.n * held.mean_y.shape[0]
            for alpha, (lam, coef, intercept) in zip(self.alphas, _ridge_path(train, self.alphas)):
                sse = held.sse(coef, intercept)
                r2 = 1.0 - sse / held.syy if held.syy > 0 else float("nan")
                self.grid_scores_.append({"alpha": alpha, "lambda": lam, "mse": sse / n_values, "r2": r2})
            best = int(np.argmin([s["mse"] for s in self.grid_scores_]))  # ties: the smallest α
            self.alpha_ = self.alphas[best]
        pooled = train.merged(held) if held.n and train.n else (train if train.n else held)
        self.lambda_, self.coef_, self.intercept_ = _ridge_solution(pooled, self.alpha_)
        return self

    @property
    def lag_matrices(self) -> np.ndarray:
        """[k, d, d]: A_j with ĥ_{t+1} = Σ_j A_j h_{t−j} + b."""
        if self.coef_ is None:
            raise RuntimeError(f"{self.name}: call fit() before reading lag_matrices")
        d = self.coef_.shape[1]
        return np.stack([self.coef_[j * d : (j + 1) * d].T for j in range(self.k)])

    def predict(self, hidden) -> np.ndarray:
        if self.coef_ is None:
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        hidden = _hidden(hidden)
        n, t, d = hidden.shape
        if d != self.coef_.shape[1]:
            raise ValueError(f"{self.name}: fitted on d={self.coef_.shape[1]}, got d={d}")
        out = np.empty((n, t - 1, d))
        step = max(1, _CHUNK_VALUES // ((t - 1) * (self.k + 1) * d))
        for start in range(0, n, step):
            features = lag_features(hidden[start : start + step], self.k)
            out[start : start + step] = features @ self.coef_ + self.intercept_
        return out


BASELINES: dict[str, Callable[[], Baseline]] = {
    "mean": MeanBaseline,
    "persistence": PersistenceBaseline,
    "context_mean": ContextMeanBaseline,
    "context_mean_from2": ContextMeanFrom2Baseline,
}
_RIDGE_NAME = re.compile(r"ridge_ar([1-9][0-9]*)")
VALID_FORMS = ("'mean', 'persistence', 'context_mean', 'context_mean_from2', 'ridge_ar<k>' with integer k ≥ 1 "
               "(e.g. 'ridge_ar1', 'ridge_ar4')")


def make_baseline(name: str, **ridge_options) -> Baseline:
    """A fresh, unfitted baseline by name; ``ridge_options`` (alphas, holdout_every) go to ridge_ar<k>."""
    if isinstance(name, str):
        if name in BASELINES:
            if ridge_options:
                raise ValueError(f"baseline {name!r} takes no options, got {sorted(ridge_options)}")
            return BASELINES[name]()
        match = _RIDGE_NAME.fullmatch(name)
        if match:
            return RidgeARBaseline(int(match.group(1)), **ridge_options)
    raise ValueError(f"unknown baseline {name!r}; valid forms are {VALID_FORMS}")


def score(baseline: Baseline, eval_batches) -> dict:
    """{"mse", "var", "r2"} of a fitted baseline on positions 2..T of every eval window
    (``target = hidden[:, 1:]``), pooled over windows × positions by RegressionAccumulator."""
    accumulator = RegressionAccumulator()
    for batch in _batches(eval_batches):
        hidden = _hidden(batch)
        accumulator.update(hidden[:, 1:], baseline.predict(hidden))
    return accumulator.result()
