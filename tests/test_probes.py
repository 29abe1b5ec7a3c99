"""Probe selection, class weights and the probe fit (SPEC §6)."""
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from pndecomp.probes import f1_scores, make_probe
from pndecomp.probes import fit_and_score as fit_probe
from pndecomp.splits import unit_hash
from pndecomp.windows import select_for_task

# --- select_for_task ---------------------------------------------------------------------

# Sorted by (order, index): 13 (null label, never selected), 17 a, 11 b, 16 c, 12 a, 14 a
# (12 and 14 tie on order; index breaks it), 10 a, 15 b.
SMALL = pd.DataFrame(
    {
        "label": ["a", "b", "a", None, "a", "b", "c", "a"],
        "order": [0.5, 0.1, 0.3, 0.0, 0.3, 0.9, 0.2, 0.05],
    },
    index=[10, 11, 12, 13, 14, 15, 16, 17],
)


def _select(frame=SMALL, **caps):
    return list(select_for_task(frame, label_column="label", order_column="order", **caps))


def test_select_orders_by_hash_and_drops_null_labels():
    assert _select() == [17, 11, 16, 12, 14, 10, 15]


def test_select_per_class_cap():
    assert _select(per_class_cap=2) == [17, 11, 16, 12, 15]
    assert _select(per_class_cap=0) == []


def test_select_total_cap():
    assert _select(total_cap=3) == [17, 11, 16]
    assert _select(total_cap=100) == _select()


def test_select_both_caps_apply_per_class_first():
    assert _select(per_class_cap=1, total_cap=2) == [17, 11]
    assert _select(per_class_cap=2, total_cap=4) == [17, 11, 16, 12]


def test_select_does_not_depend_on_frame_row_order():
    shuffled = SMALL.sample(frac=1.0, random_state=3)
    for caps in ({}, {"per_class_cap": 2}, {"total_cap": 5}, {"per_class_cap": 1, "total_cap": 2}):
        assert _select(shuffled, **caps) == _select(**caps)


def test_select_nan_labels_and_larger_frame():
    rng = np.random.default_rng(0)
    n = 200
    labels = rng.choice(["x", "y", "z"], size=n, p=[0.6, 0.3, 0.1]).astype(object)
    labels[rng.random(n) < 0.1] = np.nan
    frame = pd.DataFrame(
        {"label": labels, "order": [unit_hash("probe", i) for i in range(n)]},
        index=[f"w{i}" for i in range(n)],
    )
    chosen = select_for_task(frame, label_column="label", order_column="order", per_class_cap=15)
    counts = frame.loc[chosen, "label"].value_counts()
    assert frame.loc[chosen, "label"].notna().all()
    assert (counts <= 15).all() and counts["x"] == 15 and counts["y"] == 15
    assert frame.loc[chosen, "order"].is_monotonic_increasing
    # The chosen rows of each class are its lowest-order ones.
    for _, group in frame.dropna(subset=["label"]).groupby("label"):
        assert set(chosen) & set(group.index) == set(group.nsmallest(15, "order").index)
    # A smaller total cap is a prefix of a larger one.
    short = _select(frame, total_cap=20)
    assert short == _select(frame, total_cap=50)[:20]


def test_select_rejects_bad_input():
    with pytest.raises(ValueError, match="per_class_cap"):
        _select(per_class_cap=-1)
    with pytest.raises(ValueError, match="order"):
        _select(SMALL.assign(order=[np.nan] + [0.1] * 7))


# --- class weights and F1 -----------------------------------------------------------------


def test_probe_weights_classes_as_by_hand():
    """Class-balanced: w_c = n / (n_classes · count_c), the same fit as those weights given by hand."""
    rng = np.random.default_rng(1)
    y = rng.choice(["a", "b", "c"], size=60, p=[0.6, 0.3, 0.1])
    X = rng.normal(size=(60, 4)) + (y == "c")[:, None]
    classes, counts = np.unique(y, return_counts=True)
    by_hand = {c: len(y) / (len(classes) * n) for c, n in zip(classes, counts)}
    expected = LogisticRegression(C=1.0, class_weight=by_hand, max_iter=1000).fit(StandardScaler().fit_transform(X), y)
    unweighted = LogisticRegression(C=1.0, max_iter=1000).fit(StandardScaler().fit_transform(X), y)
    probe = make_probe(1.0).fit(X, y).named_steps["logreg"]
    np.testing.assert_allclose(probe.coef_, expected.coef_, rtol=1e-4, atol=1e-6)
    assert not np.allclose(probe.coef_, unweighted.coef_, atol=1e-3)


def test_macro_and_micro_f1_by_hand_on_imbalanced_case():
    # Always predicting the majority: a has P = 0.8, R = 1 → F1 = 8/9; b has F1 = 0.
    y_true = ["a"] * 8 + ["b"] * 2
    macro, micro = f1_scores(y_true, ["a"] * 10, labels=["a", "b"])
    assert macro == pytest.approx((8 / 9 + 0) / 2)
    assert micro == pytest.approx(0.8)  # = accuracy


def test_f1_counts_unpredicted_classes_and_skips_undefined_ones():
    y_true = ["a", "a", "b", "b"]
    y_pred = ["a", "a", "a", "a"]
    # b is present but never predicted → 0; c (absent from truth and predictions) → left out.
    macro, _ = f1_scores(y_true, y_pred, labels=["a", "b", "c"])
    assert macro == pytest.approx((2 / 3 + 0) / 2)


# --- fit_probe ----------------------------------------------------------------------------


def _blobs(rng, n_per_class, classes=("cat", "dog", "eel"), d=5, spread=0.3):
    centers = {c: 3.0 * np.eye(d)[i] for i, c in enumerate(classes)}
    y = np.repeat(np.array(classes), n_per_class)
    X = np.stack([centers[c] for c in y]) + spread * rng.normal(size=(len(y), d))
    return X, y


def test_fit_probe_separable_problem():
    rng = np.random.default_rng(2)
    splits = [_blobs(rng, n) for n in (40, 20, 20)]
    result = fit_probe(*splits[0], *splits[1], *splits[2])
    assert result["test_macro_f1"] == 1.0 and result["test_micro_f1"] == 1.0
    assert result["val_macro_f1"] == 1.0
    assert result["C"] == 0.01  # every C is perfect on val: the tie goes to the smallest
    assert (result["n_train"], result["n_val"], result["n_test"], result["n_classes"]) == (
        120, 60, 60, 3
    )


def test_fit_probe_on_noise_is_near_chance():
    rng = np.random.default_rng(3)

    def noise(n):
        return rng.normal(size=(n, 10)), rng.choice(["a", "b", "c"], size=n)

    result = fit_probe(*noise(600), *noise(300), *noise(600))
    assert abs(result["test_macro_f1"] - 1 / 3) < 0.08
    assert abs(result["test_micro_f1"] - 1 / 3) < 0.08


def test_fit_probe_picks_C_on_val():
    # Weak signal, many features, few rows: C changes the predictions. Val labels are set
    # to exactly what the C = 1 model predicts, so only C = 1 scores a perfect val F1.
    rng = np.random.default_rng(4)
    n, d = 60, 40
    y_train = rng.choice(["a", "b", "c"], size=n)
    X_train = rng.normal(size=(n, d)) + 0.3 * (y_train == "a")[:, None]
    X_val = rng.normal(size=(n, d))
    grid = (0.0001, 1.0, 1000.0)
    predictions = {
        C: make_probe(C).fit(X_train, y_train).predict(X_val) for C in grid
    }
    y_val = predictions[1.0]
    assert not np.array_equal(predictions[0.0001], y_val)  # the construction does separate Cs
    assert not np.array_equal(predictions[1000.0], y_val)
    assert len(np.unique(y_val)) == 3
    result = fit_probe(X_train, y_train, X_val, y_val, X_val, y_val, c_grid=grid)
    assert result["C"] == 1.0 and result["val_macro_f1"] == 1.0


def test_probe_standardises_with_train_statistics():
    rng = np.random.default_rng(5)
    X_train, y_train = _blobs(rng, 30)
    X_train = X_train * [1, 10, 100, 0.1, 1] + 50  # uneven scales and a large offset
    probe = make_probe(1.0).fit(X_train, y_train)
    np.testing.assert_allclose(probe.named_steps["scale"].mean_, X_train.mean(axis=0))
    np.testing.assert_allclose(probe.named_steps["scale"].scale_, X_train.std(axis=0))


def test_fit_probe_does_not_restandardise_test():
    # Shifting test features moves them across the decision boundaries only if the scaler
    # keeps train statistics; a scaler refit on test would undo the shift.
    rng = np.random.default_rng(6)
    train, val, test = (_blobs(rng, n) for n in (40, 20, 20))
    plain = fit_probe(*train, *val, *test)
    X_shifted = test[0] + np.array([30.0, 0, 0, 0, 0])
    shifted = fit_probe(*train, *val, X_shifted, test[1])
    assert plain["test_macro_f1"] == 1.0
    assert shifted["test_macro_f1"] < 0.6
    assert shifted["val_macro_f1"] == plain["val_macro_f1"]


def test_fit_probe_scores_imbalanced_test_with_unseen_class_by_hand():
    # Train/val know a and b; test also has c, whose rows look like a and are predicted a.
    rng = np.random.default_rng(7)

    def rows(label, center, n):
        return center + 0.1 * rng.normal(size=(n, 2)), [label] * n

    def split(*parts):
        return np.vstack([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    a, b = np.array([-5.0, 0]), np.array([5.0, 0])
    train = split(rows("a", a, 30), rows("b", b, 10))
    val = split(rows("a", a, 10), rows("b", b, 10))
    test = split(rows("a", a, 6), rows("b", b, 2), rows("c", a, 2))
    result = fit_probe(*train, *val, *test)
    # a: TP 6, FP 2 (the c rows) → F1 = 12/14; b: 1; c: never predicted → 0.
    assert result["test_macro_f1"] == pytest.approx((12 / 14 + 1 + 0) / 3)
    assert result["test_micro_f1"] == pytest.approx(0.8)
    assert result["n_classes"] == 2


def test_fit_probe_accepts_float16_features():
    rng = np.random.default_rng(8)
    splits = [_blobs(rng, n) for n in (40, 20, 20)]
    as16 = [x.astype(np.float16) if x.dtype.kind == "f" else x for s in splits for x in s]
    as64 = [part.astype(np.float64) if part.dtype.kind == "f" else part for part in as16]
    assert fit_probe(*as16) == fit_probe(*as64)


def test_fit_probe_needs_two_train_classes():
    X = np.zeros((5, 2))
    with pytest.raises(ValueError, match=r"\{'a': 5\}"):
        fit_probe(X, ["a"] * 5, X, ["a"] * 5, X, ["a"] * 5)
