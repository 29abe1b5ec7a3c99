"""Scores with context against direct numpy computations: R² with bootstrap intervals from per-window
statistics, the robust views, and the per-position metrics with bands."""
import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from pndecomp import bootstrap, scoring, storage
from pndecomp.metric_stages import per_position_metrics
from pndecomp.metrics import regression_scores


def synthetic(n_windows=24, length=9, d=5, seed=0):
    """Eval hidden states [W, T, d] with a large mean and a few massive rows, residuals [W, T−1, d], documents."""
    rng = np.random.default_rng(seed)
    hidden = rng.normal(3.0, 1.0, size=(n_windows, length, d))
    hidden[2, 4] *= 40  # a massive activation
    residual = 0.7 * rng.normal(size=(n_windows, length - 1, d))
    documents = np.array([f"doc{i // 3}" for i in range(n_windows)])  # three windows per document
    return hidden, residual, documents


def stats_of(hidden, residual, batch=5):
    stats = scoring.WindowStats()
    for start in range(0, len(hidden), batch):
        stats.update(torch.from_numpy(hidden[start:start + batch]), torch.from_numpy(residual[start:start + batch]))
    return stats.arrays()


def test_r2_and_intervals_match_a_direct_bootstrap():
    hidden, residual, documents = synthetic()
    arrays = stats_of(hidden, residual)
    target = hidden[:, 1:]
    persistence = hidden[:, :-1]
    sse = {"predictor": (residual ** 2).sum(axis=(1, 2)), "persistence": ((target - persistence) ** 2).sum(axis=(1, 2))}
    result = scoring.r2_with_intervals(sse, arrays["n"], arrays["mean"], arrays["m2"], documents, 200, seed=5)
    assert result["models"]["predictor"]["r2"] == pytest.approx(regression_scores(target, target - residual)["r2"],
                                                                rel=1e-12)
    assert result["models"]["persistence"]["r2"] == pytest.approx(regression_scores(target, persistence)["r2"],
                                                                  rel=1e-12)
    assert result["best_baseline"] == "persistence" and result["n_documents"] == 8
    # The same resamples, recomputed row by row with the metric code itself.
    group, n_groups = bootstrap.groups_of(documents)
    direct = {"predictor": [], "persistence": [], "difference": []}
    for counts in bootstrap.resample_counts(n_groups, 200, seed=5):
        rows = bootstrap.resample_rows(group, counts)
        scores = {"predictor": regression_scores(target[rows], target[rows] - residual[rows])["r2"],
                  "persistence": regression_scores(target[rows], persistence[rows])["r2"]}
        direct["predictor"].append(scores["predictor"])
        direct["persistence"].append(scores["persistence"])
        direct["difference"].append(scores["predictor"] - scores["persistence"])
    for name in ("predictor", "persistence"):
        low, high = np.percentile(direct[name], [2.5, 97.5])
        assert result["models"][name]["r2_lo"] == pytest.approx(low, rel=1e-9)
        assert result["models"][name]["r2_hi"] == pytest.approx(high, rel=1e-9)
    assert result["difference"]["r2_lo"] == pytest.approx(np.percentile(direct["difference"], 2.5), rel=1e-9)
    assert "r2_lo" not in scoring.r2_with_intervals(sse, arrays["n"], arrays["mean"], arrays["m2"], documents, 0,
                                                    0)["models"]["predictor"]


def test_outlier_and_position_filtered_r2_equal_r2_on_hand_filtered_rows():
    hidden, residual, _ = synthetic()
    arrays = stats_of(hidden, residual)
    target = hidden[:, 1:]
    keep = arrays["target_norm"] <= 10 * np.median(arrays["target_norm"])
    assert (~keep).sum() == 1  # the massive row, and only it
    batches = [(torch.from_numpy(hidden[i:i + 7]), torch.from_numpy(residual[i:i + 7])) for i in range(0, 24, 7)]
    expected = regression_scores(target[keep], (target - residual)[keep])
    late = np.zeros_like(keep)
    late[:, 3:] = True
    scores = scoring.masked_r2(batches, {"no_outliers": keep, "late": late})
    assert scores["no_outliers"] == pytest.approx(expected, rel=1e-12)
    assert scores["late"]["r2"] == pytest.approx(
        regression_scores(target[:, 3:], (target - residual)[:, 3:])["r2"], rel=1e-12)


def test_tail_share_and_worst_rows_by_hand():
    residual_sq = np.arange(300, dtype=float).reshape(100, 3)  # row (w, p) holds 3w + p
    assert scoring.tail(residual_sq, share=0.01) == pytest.approx((299 + 298 + 297) / residual_sq.sum())  # 3 rows
    assert scoring.tail(residual_sq, share=0.001) == pytest.approx(299 / residual_sq.sum())  # at least one row
    assert scoring.worst_rows(residual_sq, 4) == [(99, 2), (99, 1), (99, 0), (98, 2)]


def test_per_position_metrics_against_numpy(tmp_path):
    hidden, residual, documents = synthetic()
    surprisal = np.random.default_rng(3).gamma(2.0, size=residual.shape[:2])
    paths = {name: str(tmp_path / f"{name}.safetensors") for name in ("hidden", "residual", "surprisal")}
    storage.save_tensors({"hidden": torch.from_numpy(hidden).float()}, paths["hidden"])
    storage.save_tensors({"residual": torch.from_numpy(residual).float()}, paths["residual"], {"layer": 1})
    storage.save_tensors({"surprisal": torch.from_numpy(surprisal).float()}, paths["surprisal"])
    pd.DataFrame({"doc_id": documents}).to_parquet(tmp_path / "windows.parquet")
    config = {"experiment": "t", "seed": 1, "model": {"id": str(tmp_path)}, "extraction": {"batch_size": 5},
              "metrics": {"bootstrap": 100}}
    per_position_metrics(config, paths["hidden"], paths["residual"], paths["surprisal"],
                         str(tmp_path / "windows.parquet"), str(tmp_path / "out.parquet"))
    frame = pd.read_parquet(tmp_path / "out.parquet")
    h, r = hidden[:, 1:].astype(np.float32).astype(np.float64), residual.astype(np.float32).astype(np.float64)
    s = surprisal.astype(np.float32)
    mse = (r ** 2).mean(axis=(0, 2))
    np.testing.assert_allclose(frame["mse"], mse, rtol=1e-10)
    np.testing.assert_allclose(frame["var"], h.var(axis=0).mean(axis=-1), rtol=1e-10)
    np.testing.assert_allclose(frame["r2"], 1 - mse / h.var(axis=0).mean(axis=-1), rtol=1e-10)
    assert frame["spearman_rho"][4] == pytest.approx(scipy.stats.spearmanr(np.linalg.norm(r[:, 4], axis=-1),
                                                                           s[:, 4]).statistic)
    group, n_groups = bootstrap.groups_of(documents)
    resampled = [(r[bootstrap.resample_rows(group, counts)] ** 2).mean(axis=(0, 2))
                 for counts in bootstrap.resample_counts(n_groups, 100, seed=1)]
    np.testing.assert_allclose(frame["mse_lo"], np.percentile(resampled, 2.5, axis=0), rtol=1e-9)
    np.testing.assert_allclose(frame["mse_hi"], np.percentile(resampled, 97.5, axis=0), rtol=1e-9)
    assert (frame["spearman_rho_lo"] <= frame["spearman_rho"] + 1e-12).all()


def test_layer_scores_figure_draws_intervals_that_exclude_their_point(tmp_path):
    """A percentile interval of R² need not contain the point (the mean baseline of an untrained LM):
    the figure draws lo..hi as given instead of failing on negative ± errors."""
    from pndecomp.figures import layer_scores

    summary = pd.DataFrame({"layer": ["0", "7"], "r2": [0.3, 0.7], "r2_lo": [0.27, 0.68], "r2_hi": [0.32, 0.72],
                            "r2_mean": [-0.008, -0.009], "r2_mean_lo": [-0.007, -0.006],
                            "r2_mean_hi": [-0.002, -0.001]})
    layer_scores(summary, tmp_path / "f.png", tmp_path / "f.pdf", dpi=50)
    assert (tmp_path / "f.png").stat().st_size > 0 and (tmp_path / "f.pdf").stat().st_size > 0
