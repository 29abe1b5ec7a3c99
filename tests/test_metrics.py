"""Metrics against independent computations (sklearn, scipy, plain loops)."""
import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import r2_score

from pndecomp.metrics import (
    RegressionAccumulator,
    per_position_mse,
    regression_scores,
    spearman_per_position,
)


def _target_prediction(rng, shape=(7, 11, 5)):
    # Different scales and offsets per dimension, so pooled and per-dim averages differ.
    scale = rng.uniform(0.5, 3.0, size=shape[-1])
    offset = rng.uniform(-4, 4, size=shape[-1])
    target = rng.normal(size=shape) * scale + offset
    prediction = target + rng.normal(size=shape) * 0.7 * scale
    return target, prediction


def _loop_mse_var(target, prediction):
    rows_t = target.reshape(-1, target.shape[-1])
    rows_p = prediction.reshape(-1, target.shape[-1])
    n, d = rows_t.shape
    mse = sum(sum((rows_t[i, j] - rows_p[i, j]) ** 2 for j in range(d)) / d for i in range(n)) / n
    variances = []
    for j in range(d):
        mean_j = sum(rows_t[i, j] for i in range(n)) / n
        variances.append(sum((rows_t[i, j] - mean_j) ** 2 for i in range(n)) / n)
    return mse, sum(variances) / d


def test_regression_scores_match_loops_and_sklearn():
    rng = np.random.default_rng(0)
    target, prediction = _target_prediction(rng)
    scores = regression_scores(target, prediction)
    mse, var = _loop_mse_var(target, prediction)
    assert scores["mse"] == pytest.approx(mse, rel=1e-12)
    assert scores["var"] == pytest.approx(var, rel=1e-12)
    assert scores["r2"] == pytest.approx(1 - mse / var, rel=1e-12)
    rows = target.shape[-1]
    expected_r2 = r2_score(
        target.reshape(-1, rows), prediction.reshape(-1, rows), multioutput="variance_weighted"
    )
    assert scores["r2"] == pytest.approx(expected_r2, rel=1e-12)


def test_perfect_and_mean_predictions():
    rng = np.random.default_rng(1)
    target, _ = _target_prediction(rng)
    assert regression_scores(target, target)["r2"] == 1.0
    mean_prediction = np.broadcast_to(target.reshape(-1, 5).mean(axis=0), target.shape)
    assert regression_scores(target, mean_prediction)["r2"] == pytest.approx(0.0, abs=1e-12)


def test_constant_target_gives_nan_r2():
    target = np.ones((4, 3))
    scores = regression_scores(target, target + 1)
    assert scores["var"] == 0.0 and scores["mse"] == 1.0 and np.isnan(scores["r2"])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ"):
        regression_scores(np.zeros((3, 4)), np.zeros((3, 5)))


def test_accumulator_uneven_batches_equal_one_shot():
    rng = np.random.default_rng(2)
    target, prediction = _target_prediction(rng, shape=(50, 8))
    accumulator = RegressionAccumulator()
    for start, stop in [(0, 1), (1, 4), (4, 4), (4, 21), (21, 50)]:  # includes an empty batch
        accumulator.update(target[start:stop], prediction[start:stop])
    result, expected = accumulator.result(), regression_scores(target, prediction)
    for key in ("mse", "var", "r2"):
        assert result[key] == pytest.approx(expected[key], rel=1e-12)


def test_accumulator_accepts_window_shaped_batches():
    rng = np.random.default_rng(3)
    target, prediction = _target_prediction(rng, shape=(6, 9, 4))  # [windows, positions, d]
    accumulator = RegressionAccumulator()
    accumulator.update(target[:2], prediction[:2])
    accumulator.update(target[2:], prediction[2:])
    assert accumulator.result() == pytest.approx(regression_scores(target, prediction))


def test_accumulator_is_stable_with_large_offset():
    # Naive Σx² − (Σx)²/n loses everything here in float64; the merge must not.
    rng = np.random.default_rng(4)
    target = 1e8 + rng.normal(size=(1000, 3))
    prediction = target + 0.5 * rng.normal(size=target.shape)
    accumulator = RegressionAccumulator()
    for batch in np.array_split(np.arange(1000), 7):
        accumulator.update(target[batch], prediction[batch])
    assert accumulator.result()["var"] == pytest.approx(np.var(target, axis=0).mean(), rel=1e-6)


def test_accumulator_empty_raises():
    with pytest.raises(ValueError, match="no rows"):
        RegressionAccumulator().result()


def test_float16_inputs_are_computed_in_float64():
    rng = np.random.default_rng(5)
    target, prediction = _target_prediction(rng, shape=(64, 16, 8))
    # Values large enough that ‖t‖² summed in fp16 would overflow (fp16 max ≈ 65504).
    target16 = (target * 100).astype(np.float16)
    prediction16 = (prediction * 100).astype(np.float16)
    scores = regression_scores(target16, prediction16)
    expected = regression_scores(target16.astype(np.float64), prediction16.astype(np.float64))
    assert np.isfinite(scores["var"]) and scores == pytest.approx(expected, rel=1e-12)
    accumulator = RegressionAccumulator()
    accumulator.update(target16[:10], prediction16[:10])
    accumulator.update(target16[10:], prediction16[10:])
    assert accumulator.result() == pytest.approx(expected, rel=1e-12)
    residual16 = target16 - prediction16
    assert per_position_mse(residual16) == pytest.approx(
        per_position_mse(residual16.astype(np.float64)), rel=1e-12
    )


def test_per_position_mse_matches_loop(monkeypatch):
    rng = np.random.default_rng(6)
    residual = rng.normal(size=(9, 5, 3)) * np.arange(1, 6)[None, :, None]
    expected = [
        np.mean([np.sum(residual[w, p] ** 2) / 3 for w in range(9)]) for p in range(5)
    ]
    np.testing.assert_allclose(per_position_mse(residual), expected, rtol=1e-12)
    # Chunking over windows must not change the result.
    monkeypatch.setattr("pndecomp.metrics._CHUNK_VALUES", 20)
    np.testing.assert_allclose(per_position_mse(residual), expected, rtol=1e-12)


def test_per_position_mse_is_consistent_with_regression_mse():
    rng = np.random.default_rng(7)
    target, prediction = _target_prediction(rng, shape=(10, 6, 4))
    per_position = per_position_mse(target - prediction)
    assert per_position.mean() == pytest.approx(regression_scores(target, prediction)["mse"])


def test_spearman_matches_scipy_with_ties_and_constant_column():
    rng = np.random.default_rng(8)
    n_windows = 40
    x = rng.normal(size=(n_windows, 5))
    y = x + rng.normal(size=x.shape)
    x[:, 1] = np.round(x[:, 1])  # many ties in x
    y[:, 2] = rng.integers(0, 3, size=n_windows)  # many ties in y
    y[:, 3] = -x[:, 3]  # exactly −1
    x[:, 4] = 2.5  # constant → undefined
    rho = spearman_per_position(x, y)
    for p in range(4):
        assert rho[p] == pytest.approx(scipy.stats.spearmanr(x[:, p], y[:, p]).statistic, abs=1e-12)
    assert rho[3] == pytest.approx(-1.0)
    assert np.isnan(rho[4])
    assert np.isnan(spearman_per_position(y, x)[4])  # constant in the other argument too


def test_spearman_float16_and_shape_check():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(30, 3)).astype(np.float16)
    y = np.exp(x.astype(np.float64))  # monotone in x → ρ = 1
    np.testing.assert_allclose(spearman_per_position(x, y), 1.0)
    with pytest.raises(ValueError):
        spearman_per_position(np.zeros((3, 2)), np.zeros((3, 3)))
