"""The document-level bootstrap against a direct numpy bootstrap on a synthetic set."""
import numpy as np
import pytest

from pndecomp import bootstrap


def test_groups_in_order_of_first_appearance():
    group, n = bootstrap.groups_of(["d2", "d1", "d2", "d3", "d1"])
    assert n == 3 and list(group) == [0, 1, 0, 2, 1]


def test_counts_are_draws_with_replacement_and_seeded():
    counts = bootstrap.resample_counts(7, 500, seed=3)
    assert counts.shape == (500, 7) and (counts.sum(axis=1) == 7).all()
    np.testing.assert_array_equal(counts, bootstrap.resample_counts(7, 500, seed=3))
    assert not np.array_equal(counts, bootstrap.resample_counts(7, 500, seed=4))
    assert counts.mean() == pytest.approx(1.0, abs=0.05)  # each group drawn once on average


def test_interval_of_a_ratio_of_sums_equals_a_direct_bootstrap():
    """R²-like statistic 1 − ΣSSE/ΣSST from per-document sums equals the statistic recomputed on the
    resampled rows themselves, and its interval is the numpy percentile interval of those."""
    rng = np.random.default_rng(0)
    docs = np.repeat(np.arange(40), rng.integers(1, 6, size=40))
    sse, sst = rng.gamma(2.0, size=len(docs)), rng.gamma(5.0, size=len(docs))
    group, n_groups = bootstrap.groups_of(docs)
    counts = bootstrap.resample_counts(n_groups, 300, seed=0)
    from_sums = 1 - counts @ bootstrap.grouped_sums(sse, group, n_groups) / (
        counts @ bootstrap.grouped_sums(sst, group, n_groups))
    direct = []
    for row in counts:
        rows = bootstrap.resample_rows(group, row)
        assert len(rows) == sum(row[g] * np.sum(group == g) for g in range(n_groups))
        direct.append(1 - sse[rows].sum() / sst[rows].sum())
    np.testing.assert_allclose(from_sums, direct, rtol=1e-12)
    low, high = bootstrap.interval(from_sums)
    assert (low, high) == pytest.approx(tuple(np.percentile(direct, [2.5, 97.5])))
    assert low < 1 - sse.sum() / sst.sum() < high


def test_interval_covers_the_mean_at_about_the_nominal_rate():
    """Coverage of the bootstrap interval of a mean on synthetic data with a known mean."""
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(200):
        x = rng.normal(2.0, 1.0, size=60)
        group, n = bootstrap.groups_of(np.arange(60))
        counts = bootstrap.resample_counts(n, 400, seed=trial)
        means = counts @ x / counts.sum(axis=1)
        low, high = bootstrap.interval(means)
        hits += low <= 2.0 <= high
    assert 0.88 <= hits / 200 <= 0.99
