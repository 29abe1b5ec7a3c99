"""Scores with context against direct numpy computations: R² with bootstrap intervals from per-window
statistics, the robust views, and the per-position metrics with bands."""
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.stats
import torch

from pndecomp import bootstrap, scoring, storage
from pndecomp.metrics import regression_scores
from pndecomp.stages.metrics import per_position_metrics


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


def test_masked_r2_of_every_model_equals_r2_on_hand_filtered_rows():
    """Predictor and baseline under the same masks: point R², intervals and the paired difference equal
    the metric code on the kept rows of each resample (a window with no kept row included)."""
    hidden, residual, documents = synthetic()
    arrays = stats_of(hidden, residual)
    target = hidden[:, 1:]
    persistence = hidden[:, :-1]
    keep = arrays["target_norm"] <= 10 * np.median(arrays["target_norm"])
    assert (~keep).sum() == 1  # the massive row, and only it
    late = np.zeros_like(keep)
    late[:, 3:] = True
    late[5] = False  # a window with no kept row weighs nothing
    masks = {"no_outliers": keep, "late": late}
    masked = scoring.MaskedWindowStats(masks)
    for start in range(0, len(hidden), 7):
        masked.update(torch.from_numpy(hidden[start:start + 7]))
    row_sq = {"predictor": (residual ** 2).sum(axis=2), "persistence": ((target - persistence) ** 2).sum(axis=2)}
    group, n_groups = bootstrap.groups_of(documents)
    for name, kept in masks.items():
        result = scoring.r2_with_intervals({model: (rows * kept).sum(axis=1) for model, rows in row_sq.items()},
                                           *masked.arrays(name), documents, 100, seed=2)
        predictions = {"predictor": target - residual, "persistence": persistence}
        for model, prediction in predictions.items():
            expected = regression_scores(target[kept], prediction[kept])["r2"]
            assert result["models"][model]["r2"] == pytest.approx(expected, rel=1e-10), (name, model)
        direct = {"predictor": [], "persistence": []}
        for counts in bootstrap.resample_counts(n_groups, 100, seed=2):
            rows = bootstrap.resample_rows(group, counts)
            for model, prediction in predictions.items():
                direct[model].append(regression_scores(target[rows][kept[rows]], prediction[rows][kept[rows]])["r2"])
        for model in predictions:
            low, high = np.percentile(direct[model], [2.5, 97.5])
            assert result["models"][model]["r2_lo"] == pytest.approx(low, rel=1e-9), (name, model)
            assert result["models"][model]["r2_hi"] == pytest.approx(high, rel=1e-9), (name, model)
        difference = np.subtract(direct["predictor"], direct["persistence"])
        assert result["difference"]["minus"] == "persistence"
        assert result["difference"]["r2_lo"] == pytest.approx(np.percentile(difference, 2.5), rel=1e-9)


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
    pd.DataFrame({"group": documents}).to_parquet(tmp_path / "windows.parquet")
    # Two baselines' rows: the one with the smaller total SSE is the best, whose ρ is reported.
    h32 = hidden.astype(np.float32).astype(np.float64)
    noisy = (h32[:, 1:] ** 2).sum(axis=2)
    close = np.random.default_rng(4).gamma(1.0, size=noisy.shape)
    pd.DataFrame({"sse_far": noisy.sum(axis=1), "row_sq_far": list(noisy),
                  "sse_close": close.sum(axis=1), "row_sq_close": list(close)}
                 ).to_parquet(tmp_path / "baselines.parquet")
    config = {"experiment": "t", "seed": 1, "model": {"id": str(tmp_path)}, "extraction": {"batch_size": 5},
              "metrics": {"bootstrap": 100}}
    per_position_metrics(config, paths["hidden"], paths["residual"], paths["surprisal"],
                         str(tmp_path / "windows.parquet"), str(tmp_path / "out.parquet"),
                         str(tmp_path / "baselines.parquet"))
    frame = pd.read_parquet(tmp_path / "out.parquet")
    assert json.loads(pq.read_schema(tmp_path / "out.parquet").metadata[b"pndecomp"])["best_baseline"] == "close"
    h, r = hidden[:, 1:].astype(np.float32).astype(np.float64), residual.astype(np.float32).astype(np.float64)
    displacement = np.linalg.norm(h32[:, 1:] - h32[:, :-1], axis=-1)
    s = surprisal.astype(np.float32)
    mse = (r ** 2).mean(axis=(0, 2))
    np.testing.assert_allclose(frame["mse"], mse, rtol=1e-10)
    np.testing.assert_allclose(frame["var"], h.var(axis=0).mean(axis=-1), rtol=1e-10)
    np.testing.assert_allclose(frame["r2"], 1 - mse / h.var(axis=0).mean(axis=-1), rtol=1e-10)
    assert frame["spearman_rho"][4] == pytest.approx(scipy.stats.spearmanr(np.linalg.norm(r[:, 4], axis=-1),
                                                                           s[:, 4]).statistic)
    for p in (0, 4, 7):
        assert frame["spearman_rho_displacement"][p] == pytest.approx(
            scipy.stats.spearmanr(displacement[:, p], s[:, p]).statistic)
        assert frame["spearman_rho_best_baseline"][p] == pytest.approx(
            scipy.stats.spearmanr(np.sqrt(close[:, p]), s[:, p]).statistic)
    group, n_groups = bootstrap.groups_of(documents)
    resampled = [(r[bootstrap.resample_rows(group, counts)] ** 2).mean(axis=(0, 2))
                 for counts in bootstrap.resample_counts(n_groups, 100, seed=1)]
    np.testing.assert_allclose(frame["mse_lo"], np.percentile(resampled, 2.5, axis=0), rtol=1e-9)
    np.testing.assert_allclose(frame["mse_hi"], np.percentile(resampled, 97.5, axis=0), rtol=1e-9)
    rho = [scipy.stats.spearmanr(displacement[bootstrap.resample_rows(group, counts), 3],
                                 s[bootstrap.resample_rows(group, counts), 3]).statistic
           for counts in bootstrap.resample_counts(n_groups, 100, seed=1)]
    assert frame["spearman_rho_displacement_lo"][3] == pytest.approx(np.percentile(rho, 2.5), rel=1e-9)
    assert (frame["spearman_rho_lo"] <= frame["spearman_rho"] + 1e-12).all()


def test_layer_scores_figure_draws_intervals_that_exclude_their_point(tmp_path):
    """A percentile interval of R² need not contain the point (the mean baseline of an untrained LM):
    the figure draws lo..hi as given instead of failing on negative ± errors."""
    from pndecomp.figures import layer_scores

    summary = pd.DataFrame({"layer": ["0", "7"], "r2": [0.3, 0.7], "r2_lo": [0.27, 0.68], "r2_hi": [0.32, 0.72],
                            "r2_mean": [-0.008, -0.009], "r2_mean_lo": [-0.007, -0.006],
                            "r2_mean_hi": [-0.002, -0.001], "no_outliers_r2": [0.35, 0.72],
                            "no_outliers_r2_lo": [0.3, 0.7], "no_outliers_r2_hi": [0.4, 0.74],
                            "no_outliers_r2_mean": [-0.001, -0.002], "no_outliers_r2_mean_lo": [-0.003, -0.004],
                            "no_outliers_r2_mean_hi": [0.0, 0.0]})
    layer_scores(summary, tmp_path / "f.png", tmp_path / "f.pdf", dpi=50)
    assert (tmp_path / "f.png").stat().st_size > 0 and (tmp_path / "f.pdf").stat().st_size > 0
