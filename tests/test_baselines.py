"""Baselines against direct numpy computations and against processes with a known R²."""
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from pndecomp import baselines
from pndecomp.baselines import (
    BASELINES,
    RIDGE_ALPHAS,
    RidgeARBaseline,
    lag_features,
    make_baseline,
    score,
)


def _r2(target, prediction):
    """Pooled R² = 1 − ΣSSE/ΣSST over rows and dimensions, written out directly."""
    d = target.shape[-1]
    t, p = target.reshape(-1, d), prediction.reshape(-1, d)
    return 1.0 - np.sum((t - p) ** 2) / np.sum((t - t.mean(axis=0)) ** 2)


def _random_hidden(rng, n=9, t=11, d=5):
    # Offsets and scales per dimension, so centring and pooling matter.
    return rng.normal(size=(n, t, d)) * rng.uniform(0.5, 2.0, size=d) + rng.uniform(-3, 3, size=d)


def _ridge_by_hand(x, y, alpha):
    """Ridge with an unpenalised intercept: (XcᵀXc + λI) W = XcᵀYc, λ = α · mean diag(XcᵀXc)."""
    mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mean_x, y - mean_y
    gram = xc.T @ xc
    lam = alpha * np.trace(gram) / gram.shape[0]
    coef = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xc.T @ yc)
    return lam, coef, mean_y - mean_x @ coef


def _simulate_var(rng, lags, noise_chol, n_windows, t, burn_in=0, start_chol=None, mean=None):
    """h_{s+1} = Σ_j lags[j] h_{s−j} + ε: [n_windows, t, d]. Start from N(0, start_chol start_cholᵀ)
    (the stationary law for VAR(1)) or from zeros followed by burn_in steps."""
    d = noise_chol.shape[0]
    p = len(lags)
    history = [np.zeros((n_windows, d)) for _ in range(p)]
    if start_chol is not None:
        history[-1] = rng.normal(size=(n_windows, d)) @ start_chol.T
    out = []
    for step in range(burn_in + t):
        if step or start_chol is None:
            new = sum(h @ a.T for h, a in zip(reversed(history), lags)) + rng.normal(size=(n_windows, d)) @ noise_chol.T
            history = history[1:] + [new]
        if step >= burn_in:
            out.append(history[-1])
    hidden = np.stack(out, axis=1)
    return hidden if mean is None else hidden + mean


def _scaled(rng, d, radius):
    a = rng.normal(size=(d, d))
    return a * (radius / np.max(np.abs(np.linalg.eigvals(a))))


# ---------------------------------------------------------------- simple baselines by hand


def test_mean_persistence_context_mean_by_hand():
    rng = np.random.default_rng(0)
    train, test = _random_hidden(rng), _random_hidden(rng, n=7, t=13)
    n, t, d = test.shape
    target = test[:, 1:]

    mean = make_baseline("mean").fit([train[:4], train[4:]])
    expected_mean = train[:, 1:].reshape(-1, d).mean(axis=0)  # all windows, positions 2..T: the scored rows
    np.testing.assert_allclose(mean.predict(test), np.broadcast_to(expected_mean, target.shape), rtol=1e-12)

    context, context_from2 = np.empty_like(target), np.empty_like(target)
    for w in range(n):
        for s in range(t - 1):  # row s predicts position s + 2 (1-based) from positions 1..s + 1
            context[w, s] = sum(test[w, j] for j in range(s + 1)) / (s + 1)
            context_from2[w, s] = (sum(test[w, j] for j in range(1, s + 1)) / s) if s else expected_mean
    expected = {"mean": np.broadcast_to(expected_mean, target.shape), "persistence": test[:, :-1],
                "context_mean": context, "context_mean_from2": context_from2}
    for name, prediction in expected.items():
        baseline = make_baseline(name).fit(train)
        np.testing.assert_allclose(baseline.predict(test), prediction, rtol=1e-12, atol=1e-12)
        scores = score(baseline, [test[:3], test[3:]])
        assert scores["r2"] == pytest.approx(_r2(target, prediction), rel=1e-10, abs=1e-12), name
        assert scores["mse"] == pytest.approx(np.mean((target - prediction) ** 2), rel=1e-10), name
    # Fitted on the very rows it scores (positions 2..T), the mean baseline's R² is exactly 0.
    assert score(make_baseline("mean").fit(test), test)["r2"] == pytest.approx(0.0, abs=1e-12)


def test_mean_baseline_ignores_an_outsized_first_position():
    """A stationary process whose position 1 is an attention-sink-like state (norm ~100x the rest): the
    mean baseline, fitted on the rows it predicts (2..T), scores R² ≈ 0 on new windows; a mean over
    positions 1..T would be pulled toward the sink and score far below 0 (computed here by hand)."""
    rng = np.random.default_rng(3)
    d, t = 6, 16
    sink = rng.normal(size=d) * 100.0

    def windows(n):
        hidden = rng.normal(size=(n, t, d)) + 2.0
        hidden[:, 0] = sink + rng.normal(size=(n, d))
        return hidden

    train, test = windows(400), windows(400)
    r2 = score(make_baseline("mean").fit(train), test)["r2"]
    assert abs(r2) < 0.01
    target = test[:, 1:]
    with_sink = train.reshape(-1, d).mean(axis=0)  # the old fit over positions 1..T
    assert _r2(target.reshape(-1, d), np.broadcast_to(with_sink, target.shape).reshape(-1, d)) < -10
    # The context mean without position 1 is a running mean of i.i.d. rows: its R² is the finite-sample
    # cost of estimating the mean from s rows, Σ_s 1/s over rows, far above the context mean with the sink.
    from2 = score(make_baseline("context_mean_from2").fit(train), test)["r2"]
    expected = -np.mean([1.0 / s for s in range(1, t - 1)] + [0.0])
    assert from2 == pytest.approx(expected, abs=0.05)
    assert score(make_baseline("context_mean"), test)["r2"] < -50


def test_predict_shapes_and_errors():
    hidden = torch.randn(3, 6, 4, dtype=torch.float16)
    for name in (*BASELINES, "ridge_ar2"):
        baseline = make_baseline(name)
        if name in ("mean", "context_mean_from2", "ridge_ar2"):
            with pytest.raises(RuntimeError, match="fit"):
                baseline.predict(hidden)
            baseline.fit([torch.randn(20, 6, 4, dtype=torch.float16)])
        prediction = baseline.predict(hidden)
        assert prediction.shape == (3, 5, 4) and prediction.dtype == np.float64
    with pytest.raises(ValueError, match="at least 2 positions"):
        score(make_baseline("persistence"), np.zeros((2, 1, 4)))
    with pytest.raises(ValueError, match="windows, positions, d"):
        make_baseline("persistence").predict(np.zeros((5, 4)))


# ---------------------------------------------------------------- ridge against numpy.linalg


def test_ridge_ar1_matches_normal_equations():
    rng = np.random.default_rng(1)
    train, test = _random_hidden(rng, n=20, t=12), _random_hidden(rng, n=6, t=12)
    d = train.shape[-1]
    ridge = RidgeARBaseline(1, alphas=[0.3]).fit(train)
    lam, coef, intercept = _ridge_by_hand(train[:, :-1].reshape(-1, d), train[:, 1:].reshape(-1, d), 0.3)
    assert ridge.alpha_ == 0.3 and ridge.lambda_ == pytest.approx(lam, rel=1e-12)
    np.testing.assert_allclose(ridge.coef_, coef, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ridge.intercept_, intercept, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ridge.lag_matrices[0], coef.T)
    prediction = test[:, :-1] @ coef + intercept
    np.testing.assert_allclose(ridge.predict(test), prediction, rtol=1e-9, atol=1e-12)
    assert score(ridge, test)["r2"] == pytest.approx(_r2(test[:, 1:], prediction), rel=1e-9)


def test_ridge_ar1_without_penalty_is_least_squares_with_intercept():
    rng = np.random.default_rng(2)
    train, test = _random_hidden(rng, n=15, t=10), _random_hidden(rng, n=5, t=10)
    d = train.shape[-1]
    x, y = train[:, :-1].reshape(-1, d), train[:, 1:].reshape(-1, d)
    solution, *_ = np.linalg.lstsq(np.hstack([x, np.ones((len(x), 1))]), y, rcond=None)
    ridge = make_baseline("ridge_ar1", alphas=[0.0]).fit(train)
    assert ridge.lambda_ == 0.0
    np.testing.assert_allclose(ridge.coef_, solution[:d], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ridge.intercept_, solution[d], rtol=1e-8, atol=1e-10)
    prediction = test[:, :-1] @ solution[:d] + solution[d]
    assert score(ridge, test)["r2"] == pytest.approx(_r2(test[:, 1:], prediction), rel=1e-8)


def test_ridge_ar3_zero_pads_lags_before_position_one():
    rng = np.random.default_rng(3)
    train, test = _random_hidden(rng, n=12, t=7, d=3), _random_hidden(rng, n=4, t=7, d=3)
    k, d = 3, 3

    def design(hidden):
        rows = []
        for w in range(hidden.shape[0]):
            for s in range(hidden.shape[1] - 1):  # predicts position s + 2 (1-based) from s + 1, s, s − 1
                rows.append(np.concatenate([hidden[w, s - j] if s - j >= 0 else np.zeros(d) for j in range(k)]))
        return np.array(rows)

    np.testing.assert_array_equal(lag_features(test, k).reshape(-1, k * d), design(test))
    lam, coef, intercept = _ridge_by_hand(design(train), train[:, 1:].reshape(-1, d), 0.01)
    ridge = make_baseline("ridge_ar3", alphas=[0.01]).fit(train)
    np.testing.assert_allclose(ridge.coef_, coef, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ridge.intercept_, intercept, rtol=1e-9, atol=1e-12)
    prediction = (design(test) @ coef + intercept).reshape(test[:, 1:].shape)
    np.testing.assert_allclose(ridge.predict(test), prediction, rtol=1e-9, atol=1e-12)


def test_lambda_chosen_on_every_tenth_window_from_held_out_statistics():
    rng = np.random.default_rng(4)
    # Few, noisy windows and many dimensions, so the penalty matters and the grid has an interior optimum.
    d = 12
    a = _scaled(rng, d, 0.6)
    train = _simulate_var(rng, [a], 2.0 * np.eye(d), n_windows=40, t=6, burn_in=20, mean=rng.uniform(-2, 2, d))
    ridge = make_baseline("ridge_ar1").fit(iter([train[:17], train[17:]]))

    held = np.arange(len(train)) % 10 == 9  # windows 9, 19, 29, 39
    x_fit, y_fit = train[~held, :-1].reshape(-1, d), train[~held, 1:].reshape(-1, d)
    x_held, y_held = train[held, :-1].reshape(-1, d), train[held, 1:].reshape(-1, d)
    assert (ridge.n_train_rows_, ridge.n_holdout_rows_) == (len(x_fit), len(x_held))
    expected_mse = []
    for alpha in RIDGE_ALPHAS:
        _, coef, intercept = _ridge_by_hand(x_fit, y_fit, alpha)
        expected_mse.append(np.mean((y_held - x_held @ coef - intercept) ** 2))
    assert [s["alpha"] for s in ridge.grid_scores_] == list(RIDGE_ALPHAS)
    np.testing.assert_allclose([s["mse"] for s in ridge.grid_scores_], expected_mse, rtol=1e-9)
    np.testing.assert_allclose([s["r2"] for s in ridge.grid_scores_],
                               [1 - m / y_held.var(axis=0).mean() for m in expected_mse], rtol=1e-9)
    best = int(np.argmin(expected_mse))
    assert 0 < best < len(RIDGE_ALPHAS) - 1, expected_mse  # not at the edge of the grid
    assert ridge.alpha_ == RIDGE_ALPHAS[best]
    # Refit on all windows (train + held-out) with the chosen α.
    lam, coef, intercept = _ridge_by_hand(train[:, :-1].reshape(-1, d), train[:, 1:].reshape(-1, d), ridge.alpha_)
    assert ridge.lambda_ == pytest.approx(lam, rel=1e-9)
    np.testing.assert_allclose(ridge.coef_, coef, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ridge.intercept_, intercept, rtol=1e-8, atol=1e-12)


def test_choosing_lambda_needs_held_out_windows():
    hidden = np.random.default_rng(5).normal(size=(9, 5, 3))  # windows 0..8: none is a 10th
    with pytest.raises(ValueError, match="held-out"):
        make_baseline("ridge_ar1").fit(hidden)
    make_baseline("ridge_ar1", alphas=[1e-3]).fit(hidden)  # a single α needs no hold-out


# ---------------------------------------------------------------- processes with a known R²


def test_ridge_ar1_recovers_var1_theoretical_r2():
    rng = np.random.default_rng(6)
    d = 8
    a = _scaled(rng, d, 0.8)
    m = rng.normal(size=(d, d))
    noise_cov = m @ m.T / d + 0.5 * np.eye(d)
    stationary = scipy.linalg.solve_discrete_lyapunov(a, noise_cov)  # Σ_h = A Σ_h Aᵀ + Σ_ε
    r2_theory = 1.0 - np.trace(noise_cov) / np.trace(stationary)
    noise_chol, start_chol = np.linalg.cholesky(noise_cov), np.linalg.cholesky(stationary)
    mean = rng.uniform(-5, 5, size=d)
    train, test = (_simulate_var(rng, [a], noise_chol, 2000, 24, start_chol=start_chol, mean=mean) for _ in range(2))

    ridge = make_baseline("ridge_ar1").fit(np.array_split(train, 7))
    r2 = score(ridge, np.array_split(test, 3))["r2"]
    assert r2 == pytest.approx(r2_theory, abs=0.02)
    np.testing.assert_allclose(ridge.lag_matrices[0], a, atol=0.05)
    np.testing.assert_allclose(ridge.intercept_, mean - a @ mean, atol=0.1)
    # A baseline that ignores the dynamics is far below.
    assert score(make_baseline("mean").fit(train), test)["r2"] < 0.01 < r2_theory - 0.3


def test_ridge_ar4_beats_ridge_ar1_on_var2():
    rng = np.random.default_rng(7)
    d = 6
    q1, _ = np.linalg.qr(rng.normal(size=(d, d)))
    q2, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a1, a2 = 0.2 * q1, 0.7 * q2  # most of the signal two steps back
    companion = np.block([[a1, a2], [np.eye(d), np.zeros((d, d))]])
    assert np.max(np.abs(np.linalg.eigvals(companion))) < 0.95
    noise_cov = np.eye(d)
    q = scipy.linalg.block_diag(noise_cov, np.zeros((d, d)))
    stationary = scipy.linalg.solve_discrete_lyapunov(companion, q)[:d, :d]
    r2_theory = 1.0 - np.trace(noise_cov) / np.trace(stationary)
    train, test = (_simulate_var(rng, [a1, a2], np.eye(d), 1000, 48, burn_in=60) for _ in range(2))

    r2_ar1 = score(make_baseline("ridge_ar1").fit(train), test)["r2"]
    r2_ar4 = score(make_baseline("ridge_ar4").fit(train), test)["r2"]
    assert r2_ar4 > r2_ar1 + 0.2
    # Only the first row of each window (zero-padded lag 2) falls short of the theory.
    assert r2_theory - 0.03 < r2_ar4 < r2_theory + 0.01


def test_persistence_is_near_optimal_on_a_random_walk():
    rng = np.random.default_rng(8)
    d, t = 6, 32
    walk = lambda n: np.cumsum(rng.normal(size=(n, t, d)), axis=1)  # noqa: E731
    train, test = walk(1000), walk(500)
    r2 = {name: score(make_baseline(name).fit(train), test)["r2"] for name in ("mean", "persistence", "ridge_ar1")}
    # The optimal predictor is h_t itself: MSE = 1 per value; no fitted linear map does better.
    assert r2["persistence"] > 0.9
    assert r2["persistence"] >= r2["ridge_ar1"] - 0.005
    assert abs(r2["mean"]) < 0.01
    assert score(make_baseline("persistence"), test)["mse"] == pytest.approx(1.0, abs=0.02)


# ---------------------------------------------------------------- bounded memory


def test_fit_by_batches_matches_one_batch(monkeypatch):
    rng = np.random.default_rng(9)
    # float16-representable values, so the float16 torch batches hold exactly the same numbers.
    hidden = _random_hidden(rng, n=43, t=9, d=4).astype(np.float16).astype(np.float64)
    one = make_baseline("ridge_ar4").fit([hidden])
    one_mean = make_baseline("mean").fit([hidden])
    one_prediction = one.predict(hidden)

    monkeypatch.setattr(baselines, "_CHUNK_VALUES", 100)  # also split each batch into chunks of a few windows
    sizes = [1, 5, 12, 25]
    starts = np.cumsum([0, *sizes])

    refs = []

    def batches():  # one-shot generator; the fit must not keep any batch
        for start, stop in zip(starts[:-1], starts[1:]):
            batch = torch.from_numpy(hidden[start:stop]).to(torch.float16)
            refs.append(weakref.ref(batch))
            yield batch

    many = make_baseline("ridge_ar4").fit(batches())
    gc.collect()
    assert len(refs) == len(sizes) and all(ref() is None for ref in refs)
    assert many.alpha_ == one.alpha_ and (many.n_train_rows_, many.n_holdout_rows_) == (
        one.n_train_rows_, one.n_holdout_rows_)
    np.testing.assert_allclose([s["mse"] for s in many.grid_scores_], [s["mse"] for s in one.grid_scores_],
                               rtol=1e-10)
    np.testing.assert_allclose(many.coef_, one.coef_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(many.intercept_, one.intercept_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(many.predict(hidden), one_prediction, rtol=1e-9, atol=1e-12)  # chunked predict

    many_mean = make_baseline("mean").fit(torch.from_numpy(b) for b in np.array_split(hidden, 6))
    np.testing.assert_allclose(many_mean.mean_, one_mean.mean_, rtol=1e-12)


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["ridge_ar0", "ridge_ar", "ridge", "Mean", "ridge_ar-1", "ridge_ar4x", "ar1", ""])
def test_bad_names_fail_naming_them(name):
    with pytest.raises(ValueError, match=rf"unknown baseline {name!r}.*ridge_ar<k>"):
        make_baseline(name)


def test_good_names():
    assert set(BASELINES) == {"mean", "persistence", "context_mean", "context_mean_from2"}
    # The defaults are the schema's metrics.baselines: every one must be a valid name.
    import yaml

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    defaults = schema["properties"]["metrics"]["properties"]["baselines"]["default"]
    assert defaults == ["mean", "persistence", "context_mean", "context_mean_from2", "ridge_ar1", "ridge_ar4"]
    for name in defaults:
        assert make_baseline(name).name == name
    assert make_baseline("ridge_ar12").k == 12
    with pytest.raises(ValueError, match="no options"):
        make_baseline("mean", alphas=[1.0])


# ---------------------------------------------------------------- statistics dtype


def test_statistics_are_float64_on_the_cpu():
    assert baselines.statistics_dtype(torch.device("cpu")) == torch.float64
    assert make_baseline("ridge_ar2").dtype == torch.float64


def test_a_compensated_float32_sum_keeps_what_a_plain_one_loses():
    from pndecomp.ridge import CompensatedSum

    total, plain = CompensatedSum(torch.ones(3, dtype=torch.float32)), torch.ones(3, dtype=torch.float32)
    for _ in range(10_000):
        total.add(torch.full((3,), 1e-8, dtype=torch.float32))
        plain = plain + 1e-8
    assert torch.all(plain == 1.0)  # each 1e-8 is below float32's half-ulp at 1
    np.testing.assert_allclose(total.value.double().numpy(), 1.0001, rtol=1e-7)


def test_float32_statistics_agree_with_float64_on_a_var_process():
    """Where a GPU lacks fast float64 the statistics accumulate in float32 (compensated) and the solve runs in
    float64: its R² and coefficients match the float64 fit's, on states with large offsets and 40 chunks."""
    rng = np.random.default_rng(5)
    d = 6
    lags = [_scaled(rng, d, 0.6), _scaled(rng, d, 0.2)]
    hidden = _simulate_var(rng, lags, np.eye(d), n_windows=200, t=24, burn_in=20, mean=rng.uniform(20, 40, size=d))
    train, test = hidden[:160], hidden[160:]
    exact = make_baseline("ridge_ar2").fit(np.array_split(train, 40))
    single = make_baseline("ridge_ar2")
    single.dtype = torch.float32
    single.fit(np.array_split(train, 40))
    assert single.alpha_ == exact.alpha_
    assert score(single, test)["r2"] == pytest.approx(score(exact, test)["r2"], rel=1e-5)
    np.testing.assert_allclose(single.coef_, exact.coef_, atol=2e-3)


@pytest.mark.parametrize("p, block", [(12, 4), (10, 4), (5, 5), (3, 8)])
def test_symmetric_gram_is_the_full_product(p, block):
    from pndecomp.ridge import symmetric_gram

    x = torch.from_numpy(np.random.default_rng(p).normal(size=(31, p)))
    np.testing.assert_allclose(symmetric_gram(x, block).numpy(), x.numpy().T @ x.numpy(), rtol=1e-12, atol=1e-12)
