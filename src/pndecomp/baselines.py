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

Everything runs in torch on the baseline's ``device`` (the job's: ``device=``), in float64 where the device
computes it at speed (the CPU, and the data-centre GPUs: compute capability 6.0, 7.0, 8.0, 9.0), otherwise in
float32 whose sums over chunks are compensated (Kahan) and whose solve runs in float64 on the CPU
(:func:`statistics_dtype`); inputs may be float16/bfloat16 tensors or arrays on any device. Fitted parameters
(``mean_``, ``coef_``, ``intercept_``) are float64 numpy arrays; :meth:`Baseline.predict` gives a float64
numpy array, :meth:`Baseline.predict_tensor` the tensor on the device.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import numpy as np
import torch

from .metrics import RegressionAccumulator
from .predictor_kinds import DEFAULT_HOLDOUT_EVERY, RIDGE_ALPHAS
from .ridge import CompensatedSum, Moments, ridge_path, ridge_solution

# values per chunk of lag features (bounds the copies of one batch in the statistics dtype).
_CHUNK_VALUES = 2**24
#: CUDA compute capabilities with full-rate float64 (P100, V100, A100, H100): float64 statistics there.
FAST_FLOAT64_CAPABILITIES = ((6, 0), (7, 0), (8, 0), (9, 0))


def statistics_dtype(device: torch.device) -> torch.dtype:
    """float64 on the CPU and where the GPU computes it at speed; float32 (compensated sums) elsewhere."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) not in FAST_FLOAT64_CAPABILITIES:
        return torch.float32
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


def _device(device) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def _hidden(batch, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A [n, T, d] tensor/array on ``device`` in ``dtype`` (any input dtype and device)."""
    tensor = batch.detach() if isinstance(batch, torch.Tensor) else torch.from_numpy(np.asarray(batch))
    if tensor.ndim != 3:
        raise ValueError(f"hidden states must be [windows, positions, d], got shape {tuple(tensor.shape)}")
    if tensor.shape[1] < 2:
        raise ValueError(f"windows need at least 2 positions to predict one, got T={tensor.shape[1]}")
    return tensor.to(device=device, dtype=dtype)


def _batches(batches) -> Iterable:
    """A single [n, T, d] array/tensor counts as one batch; anything else is iterated."""
    if getattr(batches, "ndim", None) == 3:
        return (batches,)
    return batches


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float64).numpy()


class Baseline:
    """Common interface; subclasses set ``name`` and implement ``predict_tensor`` (and ``fit`` if fitted)."""

    name = "baseline"

    def __init__(self, device=None) -> None:
        self.device = _device(device)
        self.dtype = statistics_dtype(self.device)

    def fit(self, batches) -> Baseline:
        """Nothing to learn (persistence, context_mean): the batches are not even read."""
        return self

    def hidden(self, batch) -> torch.Tensor:
        return _hidden(batch, self.device, self.dtype)

    def predict_tensor(self, hidden) -> torch.Tensor:
        """[n, T, d] -> [n, T-1, d] on the baseline's device, in its statistics dtype."""
        raise NotImplementedError

    def predict(self, hidden) -> np.ndarray:
        return _numpy(self.predict_tensor(hidden))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class MeanBaseline(Baseline):
    """ĥ = the train mean of h over positions 2..T of every window: the rows every baseline predicts.
    Position 1 is left out because it is never predicted, and it holds the attention-sink state, whose
    norm would pull the mean away from every scored row (R² −0.9 instead of ≈ 0 at SmolLM2's block 15)."""

    name = "mean"

    def __init__(self, device=None) -> None:
        super().__init__(device)
        self.mean_: np.ndarray | None = None
        self.n_rows_ = 0

    def fit(self, batches) -> MeanBaseline:
        total, count = None, 0
        for batch in _batches(batches):
            hidden = self.hidden(batch)
            rows = hidden[:, 1:].reshape(-1, hidden.shape[-1])
            if total is None:
                total = CompensatedSum(rows.sum(dim=0))
            elif rows.shape[1] != total.value.shape[0]:
                raise ValueError(f"batch has d={rows.shape[1]}, earlier batches d={total.value.shape[0]}")
            else:
                total.add(rows.sum(dim=0))
            count += rows.shape[0]
        if count == 0:
            raise ValueError("mean: no training windows")
        self.mean_, self.n_rows_ = _numpy(total.value) / count, count
        return self

    def fitted_mean(self, hidden: torch.Tensor) -> torch.Tensor:
        """The train mean [d] on the device, after checking the fit and ``hidden``'s d."""
        if self.mean_ is None:
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        if hidden.shape[-1] != self.mean_.shape[0]:
            raise ValueError(f"{self.name}: fitted on d={self.mean_.shape[0]}, got d={hidden.shape[-1]}")
        return torch.from_numpy(self.mean_).to(device=self.device, dtype=self.dtype)

    def predict_tensor(self, hidden) -> torch.Tensor:
        hidden = self.hidden(hidden)
        n, t, d = hidden.shape
        return self.fitted_mean(hidden).expand(n, t - 1, d).clone()


class PersistenceBaseline(Baseline):
    """ĥ_{t+1} = h_t."""

    name = "persistence"

    def predict_tensor(self, hidden) -> torch.Tensor:
        return self.hidden(hidden)[:, :-1].clone()


def _running_mean(states: torch.Tensor) -> torch.Tensor:
    """[n, t, d] -> the mean of states 1..s at every s."""
    counts = torch.arange(1, states.shape[1] + 1, device=states.device, dtype=states.dtype)[None, :, None]
    return torch.cumsum(states, dim=1) / counts


class ContextMeanBaseline(Baseline):
    """ĥ_{t+1} = mean(h_1..h_t), the running mean within the window."""

    name = "context_mean"

    def predict_tensor(self, hidden) -> torch.Tensor:
        return _running_mean(self.hidden(hidden)[:, :-1])


class ContextMeanFrom2Baseline(MeanBaseline):
    """ĥ_{t+1} = mean(h_2..h_t); ĥ_2 = the train mean of positions 2..T (no context after position 1)."""

    name = "context_mean_from2"

    def predict_tensor(self, hidden) -> torch.Tensor:
        hidden = self.hidden(hidden)
        first = self.fitted_mean(hidden).expand(hidden.shape[0], 1, hidden.shape[-1])
        return torch.cat([first, _running_mean(hidden[:, 1:-1])], dim=1)


def lag_features(hidden, k: int, device=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """[n, T, d] -> [n, T-1, k·d]: row t is (h_t, h_{t−1}, …, h_{t−k+1}), zero before position 1; on
    ``device`` (default: the tensor's own, or the CPU) in ``dtype``."""
    if device is None:
        device = hidden.device if isinstance(hidden, torch.Tensor) else torch.device("cpu")
    hidden = _hidden(hidden, torch.device(device), dtype)
    n, t, d = hidden.shape
    past = hidden[:, :-1]
    features = hidden.new_zeros((n, t - 1, k * d))
    for lag in range(min(k, t - 1)):
        features[:, lag:, lag * d : (lag + 1) * d] = past[:, : t - 1 - lag]
    return features


class RidgeARBaseline(Baseline):
    """ĥ_{t+1} = Σ_{j<k} A_j h_{t−j} + b by ridge regression (see the module docstring).

    After ``fit``: ``coef_`` [k·d, d] (rows j·d..(j+1)·d hold A_jᵀ; see :attr:`lag_matrices`),
    ``intercept_`` [d], ``alpha_`` (chosen relative penalty), ``lambda_`` (absolute λ of the
    final fit), ``grid_scores_`` (one dict per α: alpha, lambda, held-out mse and r2; empty
    when ``alphas`` has a single value and no held-out scoring was needed), ``n_train_rows_``,
    ``n_holdout_rows_``.
    """

    def __init__(self, k: int, alphas: Iterable[float] = RIDGE_ALPHAS,
                 holdout_every: int = DEFAULT_HOLDOUT_EVERY, device=None) -> None:
        super().__init__(device)
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

    def _accumulate(self, batches) -> tuple[Moments, Moments]:
        train, held = Moments(), Moments()
        d = None
        next_window = 0
        for batch in _batches(batches):
            hidden = self.hidden(batch)
            n, t, d_b = hidden.shape
            if d is None:
                d = d_b
            elif d_b != d:
                raise ValueError(f"{self.name}: batch has d={d_b}, earlier batches d={d}")
            index = next_window + torch.arange(n, device=self.device)
            next_window += n
            is_held = index % self.holdout_every == self.holdout_every - 1
            step = max(1, _CHUNK_VALUES // ((t - 1) * (self.k + 1) * d))
            for moments, part in ((train, hidden[~is_held]), (held, hidden[is_held])):
                for start in range(0, part.shape[0], step):
                    chunk = part[start : start + step]
                    x = lag_features(chunk, self.k, self.device, self.dtype).reshape(-1, self.k * d)
                    moments.update(x, chunk[:, 1:].reshape(-1, d))
        if train.n + held.n == 0:
            raise ValueError(f"{self.name}: no training windows")
        # The solve in float64: on the device where it has float64 at speed, else on the CPU.
        solve_on = self.device if self.dtype == torch.float64 else torch.device("cpu")
        return tuple(moments.to(solve_on, torch.float64) if moments.n else moments for moments in (train, held))

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
            syy = float(held.syy)
            for alpha, (lam, coef, intercept) in zip(self.alphas, ridge_path(train, self.alphas)):
                sse = held.sse(coef, intercept)
                r2 = 1.0 - sse / syy if syy > 0 else float("nan")
                self.grid_scores_.append({"alpha": alpha, "lambda": lam, "mse": sse / n_values, "r2": r2})
            best = int(np.argmin([s["mse"] for s in self.grid_scores_]))  # ties: the smallest α
            self.alpha_ = self.alphas[best]
        pooled = train.merged(held) if held.n and train.n else (train if train.n else held)
        self.lambda_, coef, intercept = ridge_solution(pooled, self.alpha_)
        self.coef_, self.intercept_ = _numpy(coef), _numpy(intercept)
        return self

    @property
    def lag_matrices(self) -> np.ndarray:
        """[k, d, d]: A_j with ĥ_{t+1} = Σ_j A_j h_{t−j} + b."""
        if self.coef_ is None:
            raise RuntimeError(f"{self.name}: call fit() before reading lag_matrices")
        d = self.coef_.shape[1]
        return np.stack([self.coef_[j * d : (j + 1) * d].T for j in range(self.k)])

    def predict_tensor(self, hidden) -> torch.Tensor:
        if self.coef_ is None:
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        hidden = self.hidden(hidden)
        n, t, d = hidden.shape
        if d != self.coef_.shape[1]:
            raise ValueError(f"{self.name}: fitted on d={self.coef_.shape[1]}, got d={d}")
        coef, intercept = (torch.from_numpy(value).to(device=self.device, dtype=self.dtype)
                           for value in (self.coef_, self.intercept_))
        out = hidden.new_empty((n, t - 1, d))
        step = max(1, _CHUNK_VALUES // ((t - 1) * (self.k + 1) * d))
        for start in range(0, n, step):
            features = lag_features(hidden[start : start + step], self.k, self.device, self.dtype)
            out[start : start + step] = features @ coef + intercept
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


def make_baseline(name: str, device=None, **ridge_options) -> Baseline:
    """A fresh, unfitted baseline by name, computing on ``device`` (default the CPU); ``ridge_options``
    (alphas, holdout_every) go to ridge_ar<k>."""
    if isinstance(name, str):
        if name in BASELINES:
            if ridge_options:
                raise ValueError(f"baseline {name!r} takes no options, got {sorted(ridge_options)}")
            return BASELINES[name](device)
        match = _RIDGE_NAME.fullmatch(name)
        if match:
            return RidgeARBaseline(int(match.group(1)), device=device, **ridge_options)
    raise ValueError(f"unknown baseline {name!r}; valid forms are {VALID_FORMS}")


def score(baseline: Baseline, eval_batches) -> dict:
    """{"mse", "var", "r2"} of a fitted baseline on positions 2..T of every eval window
    (``target = hidden[:, 1:]``), pooled over windows × positions by RegressionAccumulator."""
    accumulator = RegressionAccumulator()
    for batch in _batches(eval_batches):
        hidden = baseline.hidden(batch)
        accumulator.update(_numpy(hidden[:, 1:]), baseline.predict(hidden))
    return accumulator.result()
