"""Least squares from sufficient statistics: centred cross-products merged chunk by chunk, and the ridge
solutions they give (:class:`pndecomp.baselines.RidgeARBaseline`'s fit), in torch on any device."""
from __future__ import annotations

import torch


class CompensatedSum:
    """A running sum, Kahan-compensated below float64: exact to the dtype's rounding of the total rather
    than accumulating a rounding per term (what float32 statistics need over many chunks). In float64 it
    is a plain sum, as the statistics were before they ran in torch (the compensation would cost four
    more passes over a p × p matrix per chunk)."""

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value
        self._error = torch.zeros_like(value) if value.dtype != torch.float64 else None

    def add(self, term: torch.Tensor) -> None:
        if self._error is None:
            self.value = self.value + term
            return
        corrected = term - self._error
        total = self.value + corrected
        self._error = (total - self.value) - corrected
        self.value = total


def symmetric_gram(x: torch.Tensor, block: int) -> torch.Tensor:
    """xᵀx from its upper blocks of ``block`` columns (for lag features: one lag each), mirrored: torch has no
    symmetric rank-k product, and with k blocks this does (k + 1) / 2k of a full product's work."""
    p = x.shape[1]
    gram = x.new_empty((p, p))
    for start in range(0, p, block):
        rows = x[:, start:start + block].T @ x[:, start:]
        gram[start:start + block, start:] = rows
        gram[start + block:, start:start + block] = rows[:, block:].T
    return gram


class Moments:
    """Centred sufficient statistics of rows (x, y) for a least-squares fit, merged chunk by chunk
    with Chan et al.'s parallel update (no Σx² − (Σx)²/n cancellation when means are large), with
    compensated sums of the cross-products (:class:`CompensatedSum`).

    n: rows; mean_x [p], mean_y [d]; cxx = Σ(x−x̄)(x−x̄)ᵀ [p, p]; cxy = Σ(x−x̄)(y−ȳ)ᵀ [p, d];
    syy = Σ‖y−ȳ‖² (only the trace of YᵀY is needed for SSE).
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean_x = self.mean_y = self.syy = None
        self._cxx = self._cxy = None

    @property
    def cxx(self) -> torch.Tensor:
        return self._cxx.value

    @property
    def cxy(self) -> torch.Tensor:
        return self._cxy.value

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_x, mean_y = x.mean(dim=0), y.mean(dim=0)
        xc, yc = x - mean_x, y - mean_y
        self._merge(n_b, mean_x, mean_y, symmetric_gram(xc, yc.shape[1]), xc.T @ yc, torch.sum(yc * yc))

    def _merge(self, n_b, mean_x, mean_y, cxx, cxy, syy) -> None:
        if self.n == 0:
            self.n, self.mean_x, self.mean_y, self.syy = n_b, mean_x, mean_y, syy
            self._cxx, self._cxy = CompensatedSum(cxx), CompensatedSum(cxy)
            return
        n = self.n + n_b
        weight = self.n * n_b / n
        dx, dy = mean_x - self.mean_x, mean_y - self.mean_y
        self._cxx.add(cxx + weight * torch.outer(dx, dx))
        self._cxy.add(cxy + weight * torch.outer(dx, dy))
        self.syy = self.syy + syy + weight * (dy @ dy)
        self.mean_x = self.mean_x + dx * (n_b / n)
        self.mean_y = self.mean_y + dy * (n_b / n)
        self.n = n

    def merged(self, other: Moments) -> Moments:
        out = Moments()
        for moments in (self, other):
            out._merge(moments.n, moments.mean_x, moments.mean_y, moments.cxx, moments.cxy, moments.syy)
        return out

    def to(self, device: torch.device, dtype: torch.dtype) -> Moments:
        """These statistics on ``device`` in ``dtype`` (the solve's: float64)."""
        out = Moments()
        out._merge(self.n, *(value.to(device=device, dtype=dtype) for value in (
            self.mean_x, self.mean_y, self.cxx, self.cxy, self.syy)))
        return out

    def sse(self, coef: torch.Tensor, intercept: torch.Tensor) -> float:
        """Σ‖y − (Wᵀx + b)‖² over these rows, from the statistics alone:
        tr(S_yy) − 2 tr(WᵀS_xy) + tr(WᵀS_xxW) + n‖ȳ − b − Wᵀx̄‖² (the cross terms vanish after centring)."""
        offset = self.mean_y - intercept - self.mean_x @ coef
        value = float(self.syy - 2.0 * torch.sum(coef * self.cxy) + torch.sum(coef * (self.cxx @ coef)))
        return max(value, 0.0) + self.n * float(offset @ offset)


def ridge_path(moments: Moments, alphas) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    """[(λ, W [p, d], b [d])] for each α: (S_xx + λI) W = S_xy, b = ȳ − Wᵀx̄, λ = α·tr(S_xx)/p.

    One eigendecomposition serves the whole grid; at λ = 0 directions with a (numerically) zero
    eigenvalue are dropped, i.e. the minimum-norm least-squares solution.
    """
    p = moments.cxx.shape[0]
    scale = float(torch.trace(moments.cxx)) / p
    eigenvalues, eigenvectors = torch.linalg.eigh(moments.cxx)
    projected = eigenvectors.T @ moments.cxy
    floor = max(float(eigenvalues.max()), 0.0) * p * torch.finfo(moments.cxx.dtype).eps
    path = []
    for alpha in alphas:
        lam = float(alpha) * scale
        denominator = eigenvalues + lam
        inverse = 1.0 / torch.where(denominator > floor, denominator, torch.inf)
        coef = eigenvectors @ (projected * inverse[:, None])
        path.append((lam, coef, moments.mean_y - moments.mean_x @ coef))
    return path


def ridge_solution(moments: Moments, alpha: float) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(λ, W, b) for one α, as :func:`ridge_path` gives it; for α > 0 by a Cholesky solve, several
    times cheaper than the eigendecomposition the path shares across α."""
    if alpha == 0:
        return ridge_path(moments, (alpha,))[0]
    p = moments.cxx.shape[0]
    lam = float(alpha) * float(torch.trace(moments.cxx)) / p
    factor = torch.linalg.cholesky(moments.cxx + lam * torch.eye(p, dtype=moments.cxx.dtype,
                                                                   device=moments.cxx.device))
    coef = torch.cholesky_solve(moments.cxy, factor)
    return lam, coef, moments.mean_y - moments.mean_x @ coef
