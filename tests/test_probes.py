"""Probe selection, class weights, the probe fit, its bootstrap intervals and control tasks (docs/method.md §6)."""
import hashlib
import json
import logging
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from pndecomp import bootstrap
from pndecomp.probes import f1_scores, make_probe, resampled_macro_f1
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


def _unseen_class_case():
    """Train/val know a and b; test has a: 6, b: 2 and c: 2 windows, whose rows look like a."""
    rng = np.random.default_rng(7)

    def rows(label, center, n):
        return center + 0.1 * rng.normal(size=(n, 2)), [label] * n

    def split(*parts):
        return np.vstack([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    a, b = np.array([-5.0, 0]), np.array([5.0, 0])
    train = split(rows("a", a, 30), rows("b", b, 10))
    val = split(rows("a", a, 10), rows("b", b, 10))
    return train, val, split(rows("a", a, 6), rows("b", b, 2), rows("c", a, 2))


def test_fit_probe_scores_imbalanced_test_with_unseen_class_by_hand():
    # Train/val know a and b; test also has c, whose rows look like a and are predicted a.
    train, val, test = _unseen_class_case()
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
    first, second = fit_probe(*as16), fit_probe(*as64)
    np.testing.assert_array_equal(first.pop("test_predictions"), second.pop("test_predictions"))
    assert first == second


def test_fit_probe_needs_two_train_classes():
    X = np.zeros((5, 2))
    with pytest.raises(ValueError, match=r"\{'a': 5\}"):
        fit_probe(X, ["a"] * 5, X, ["a"] * 5, X, ["a"] * 5)


# --- min_test_per_class -------------------------------------------------------------------


def test_small_test_classes_leave_the_macro_average_by_hand(caplog):
    """Test has a: 6, b: 2, c: 2 windows (c looks like a and is predicted a). With
    min_test_per_class = 3, b and c (2 < 3 windows each) leave the macro average: it is F1_a alone,
    with the c rows still false positives of a; micro-F1 keeps every row; train/val are untouched."""
    train, val, test = _unseen_class_case()
    everything = fit_probe(*train, *val, *test)
    with caplog.at_level(logging.WARNING, logger="pndecomp.probes"):
        result = fit_probe(*train, *val, *test, min_test_per_class=3)
    # a: TP 6, FP 2 (the c rows), FN 0 → F1 = 12/14; b and c excluded.
    assert result["test_macro_f1"] == pytest.approx(12 / 14)
    assert result["n_classes_excluded"] == 2 and result["test_macro_labels"] == ["a"]
    assert result["test_micro_f1"] == pytest.approx(0.8) == everything["test_micro_f1"]
    assert result["val_macro_f1"] == everything["val_macro_f1"] and result["C"] == everything["C"]
    assert everything["n_classes_excluded"] == 0  # the default keeps every class
    assert "fewer than 3" in caplog.text and "'b': 2" in caplog.text and "'c': 2" in caplog.text
    # The bound is inclusive: 2 windows are enough for min_test_per_class = 2.
    assert fit_probe(*train, *val, *test, min_test_per_class=2)["n_classes_excluded"] == 0
    # A train class absent from test has 0 < 1 test windows.
    no_b = (test[0][test[1] != "b"], test[1][test[1] != "b"])
    assert fit_probe(*train, *val, *no_b, min_test_per_class=1)["n_classes_excluded"] == 1


def test_every_class_excluded_gives_nan():
    rng = np.random.default_rng(9)
    splits = [_blobs(rng, n) for n in (20, 10, 4)]
    result = fit_probe(*splits[0], *splits[1], *splits[2], min_test_per_class=5)
    assert np.isnan(result["test_macro_f1"]) and result["n_classes_excluded"] == 3
    assert result["test_micro_f1"] == 1.0


# --- bootstrap intervals of macro-F1 ------------------------------------------------------


def test_resampled_macro_f1_equals_sklearn_on_the_resampled_rows():
    """Per-document confusion counts weighted by the resample counts give exactly the macro-F1 that
    sklearn computes on the resampled rows themselves (resample_rows), over the same labels."""
    rng = np.random.default_rng(10)
    docs = np.repeat([f"d{i}" for i in range(30)], rng.integers(1, 5, size=30))
    y_true = rng.choice(["a", "b", "c", "d"], size=len(docs), p=[0.5, 0.3, 0.15, 0.05])
    y_pred = np.where(rng.random(len(docs)) < 0.6, y_true, rng.choice(["a", "b", "c", "d"], size=len(docs)))
    labels = ["a", "b", "c", "d", "e"]  # "e": never present nor predicted → always left out
    group, n_docs = bootstrap.groups_of(docs)
    counts = bootstrap.resample_counts(n_docs, 200, seed=0)
    fast = resampled_macro_f1(y_true, y_pred, labels, group, counts)
    direct = []
    for row in counts:
        rows = bootstrap.resample_rows(group, row)
        direct.append(f1_score(y_true[rows], y_pred[rows], labels=labels, average="macro", zero_division=np.nan))
    np.testing.assert_allclose(fast, direct, rtol=1e-12)
    # The resample of every document once is the data itself.
    ones = np.ones((1, n_docs), dtype=int)
    assert resampled_macro_f1(y_true, y_pred, labels, group, ones)[0] == pytest.approx(
        f1_scores(y_true, y_pred, labels)[0])
    low, high = bootstrap.interval(fast)
    assert (low, high) == pytest.approx(tuple(np.percentile(direct, [2.5, 97.5])))
    assert low < f1_scores(y_true, y_pred, labels)[0] < high
    assert np.isnan(resampled_macro_f1(y_true, y_pred, [], group, counts)).all()


FEATURES_MODEL = {"path": "model", "gguf_file": None, "revision": None, "weights_sha256": "0" * 64}


def _probe_windows(tmp_path, rng, n_docs=60, per_doc=3, d=6, signal=None):
    """A probe-windows Parquet file and a probe-features file of layer 3 for probe_stages.fit_probe:
    labels a/b/c by document, features = class centre (when ``signal``) + noise; returns their paths.
    Documents i and i + 5 (same split) share a near-duplicate group whenever i // 10 is equal: 60
    documents make 30 groups, the bootstrap units."""
    from safetensors.numpy import save_file

    index = np.arange(n_docs)
    doc_ids = np.repeat([f"doc{i}" for i in index], per_doc)
    groups = np.repeat([f"g{i % 5}-{i // 10}" for i in index], per_doc)
    doc_label = np.array(["a", "b", "c"])[index % 3]
    labels = np.repeat(doc_label, per_doc)
    split = np.repeat(np.array(["probe_train", "probe_val", "probe_test", "probe_train", "probe_test"])[
        index % 5], per_doc)
    window_ids = [f"{doc}@{k}" for doc, k in zip(doc_ids, np.tile(np.arange(per_doc), n_docs))]
    frame = pd.DataFrame({"window_id": window_ids, "doc_id": doc_ids, "group": groups, "split": split,
                          "domain": labels, "in_domain": True})
    windows = tmp_path / "probe.parquet"
    frame.to_parquet(windows)
    centres = {c: 2.0 * np.eye(d)[i] for i, c in enumerate("abc")}
    h = rng.normal(size=(len(frame), d)) + (np.stack([centres[c] for c in labels]) if signal else 0)
    tensors = {name: value.astype(np.float32) for name, value in {
        "h": h, "h_mean": rng.normal(size=h.shape), "hhat": h + 0.5 * rng.normal(size=h.shape),
        "r": rng.normal(size=h.shape)}.items()}
    features = tmp_path / "features.safetensors"
    metadata = {"experiment": "features", "seed": 0, "model": FEATURES_MODEL, "layer": 3, "position": "T (last)"}
    save_file(tensors, str(features), {key: json.dumps(value) for key, value in metadata.items()})
    return windows, features


def test_fit_probe_stage_intervals_and_paired_differences(tmp_path):
    """probe_stages.fit_probe: every representation's interval comes from the same resamples of the split
    units (near-duplicate groups, not documents), and the paired difference ĥ − r is the percentile
    interval of the per-resample differences, both recomputed here directly with sklearn on resample_rows."""
    from pndecomp.stages import probes as probe_stages

    rng = np.random.default_rng(11)
    windows, features = _probe_windows(tmp_path, rng, signal=True)
    config = {"experiment": "probes", "seed": 0,
              "probes": {"c_grid": [0.1, 1.0], "max_iter": 500, "min_test_per_class": 1},
              "metrics": {"bootstrap": 300}}
    out, diffs = tmp_path / "scores.parquet", tmp_path / "differences.parquet"
    probe_stages.fit_probe(config, "domain", str(windows), str(features), str(out), str(diffs))
    # The keys of stages.output_metadata(config, layer=3); the model's identity from the features file.
    stored = json.loads(pq.read_schema(out).metadata[b"pndecomp"])
    assert set(stored) == {"packages", "python", "experiment", "seed", "model", "layer"}
    assert (stored["experiment"], stored["seed"], stored["model"], stored["layer"]) == ("probes", 0, FEATURES_MODEL, 3)
    table, differences = pd.read_parquet(out), pd.read_parquet(diffs)
    assert list(table["representation"]) == ["h", "h_mean", "hhat", "r", "hhat_r"]
    assert (table["test_macro_f1_lo"] <= table["test_macro_f1"]).all()
    assert (table["test_macro_f1"] <= table["test_macro_f1_hi"]).all()
    # 24 test documents in 12 groups: n_test_documents counts the bootstrap units.
    assert (table["n_test_documents"] == 12).all() and (table["n_classes_excluded"] == 0).all()

    # Direct recomputation: refit the probes (deterministic) and rescore on resample_rows with sklearn.
    from safetensors.numpy import load_file

    from pndecomp.representations import REPRESENTATIONS

    frame = pd.read_parquet(windows)
    tensors = load_file(str(features))
    rows = {s: np.flatnonzero(frame["split"] == s) for s in ("probe_train", "probe_val", "probe_test")}
    y = frame["domain"].to_numpy()
    group, n_groups = bootstrap.groups_of(frame["group"].to_numpy()[rows["probe_test"]])
    assert n_groups == 12
    counts = bootstrap.resample_counts(n_groups, 300, seed=0)
    samples = {}
    for name in ("h", "hhat", "r"):
        x = REPRESENTATIONS[name].build(tensors)
        result = fit_probe(x[rows["probe_train"]], y[rows["probe_train"]], x[rows["probe_val"]],
                           y[rows["probe_val"]], x[rows["probe_test"]], y[rows["probe_test"]],
                           c_grid=(0.1, 1.0), max_iter=500)
        y_test, predicted = y[rows["probe_test"]], result["test_predictions"]
        samples[name] = np.array([f1_score(y_test[r], predicted[r], labels=["a", "b", "c"], average="macro",
                                           zero_division=np.nan)
                                  for r in (bootstrap.resample_rows(group, c) for c in counts)])
        row = table[table["representation"] == name].iloc[0]
        assert row["test_macro_f1"] == pytest.approx(result["test_macro_f1"])
        assert (row["test_macro_f1_lo"], row["test_macro_f1_hi"]) == pytest.approx(
            tuple(np.percentile(samples[name], [2.5, 97.5])))
        # The per-resample scores are kept for probe_table's paired selectivity interval.
        np.testing.assert_allclose(row["test_macro_f1_samples"], samples[name], rtol=1e-12)
    for other in ("r", "h"):
        pair = differences[(differences["representation_a"] == "hhat") & (differences["representation_b"] == other)]
        assert len(pair) == 1
        point = table.set_index("representation")["test_macro_f1"]
        assert pair["difference"].iloc[0] == pytest.approx(point["hhat"] - point[other])
        assert (pair["difference_lo"].iloc[0], pair["difference_hi"].iloc[0]) == pytest.approx(
            tuple(np.percentile(samples["hhat"] - samples[other], [2.5, 97.5])))
    # ĥ carries the label, r is noise: ĥ − r is clearly positive.
    assert differences.set_index("representation_b").loc["r", "difference_lo"] > 0
    assert set(differences["representation_b"]) == {"r", "h", "h_mean"}

    # metrics.bootstrap = 0: the same F1, intervals NaN.
    config["metrics"]["bootstrap"] = 0
    probe_stages.fit_probe(config, "domain", str(windows), str(features), str(out), str(diffs))
    off, off_differences = pd.read_parquet(out), pd.read_parquet(diffs)
    np.testing.assert_array_equal(off["test_macro_f1"], table["test_macro_f1"])
    assert off[["test_macro_f1_lo", "test_macro_f1_hi"]].isna().all().all()
    assert (off["test_macro_f1_samples"].map(len) == 0).all()
    assert (off["test_rows_sha1"] == table["test_rows_sha1"]).all()
    test = frame[frame["split"] == "probe_test"]
    digest = hashlib.sha1("\n".join(f"{w}\t{g}" for w, g in zip(test["window_id"], test["group"])).encode())
    assert (table["test_rows_sha1"] == digest.hexdigest()).all()
    assert off_differences[["difference_lo", "difference_hi"]].isna().all().all()
    np.testing.assert_allclose(off_differences["difference"], differences["difference"])


# --- probe tables and heatmaps ------------------------------------------------------------


def _layer_table(task, f1, lo=None, hi=None, samples=None, digest="rows"):
    from pndecomp.representations import REPRESENTATIONS

    frame = pd.DataFrame({"task": task, "representation": list(REPRESENTATIONS), "test_macro_f1": f1})
    if lo is not None:
        frame = frame.assign(test_macro_f1_lo=lo, test_macro_f1_hi=hi)
    if samples is not None:  # [representations, resamples], as probe_stages.fit_probe stores them
        frame = frame.assign(test_macro_f1_samples=[list(row) for row in samples], test_rows_sha1=digest,
                             n_resamples=len(samples[0]))
    return frame


def test_probe_table_stacks_layers_differences_and_selectivity(tmp_path):
    from pndecomp.stages import probes as probe_stages

    rng = np.random.default_rng(12)
    paths, control_paths, difference_paths, samples = {}, {}, {}, {}
    for index, layer in enumerate(["embed", "3"]):
        samples[layer] = rng.uniform(0.5, 1, size=(5, 40)), rng.uniform(0, 0.5, size=(5, 40))
        paths[layer] = tmp_path / f"task-{layer}.parquet"
        _layer_table("domain", [0.9, 0.8, 0.7, 0.6, 0.95 - index], samples=samples[layer][0]).assign(
            layer="ignored").to_parquet(paths[layer])
        control_paths[layer] = tmp_path / f"control-{layer}.parquet"
        _layer_table("domain_control", [0.3, 0.35, 0.2, 0.25, 0.3], samples=samples[layer][1]).to_parquet(
            control_paths[layer])
        difference_paths[layer] = tmp_path / f"differences-{layer}.parquet"
        pd.DataFrame({"task": "domain", "representation_a": "hhat", "representation_b": ["r", "h", "h_mean"],
                      "difference": [0.1, -0.2, -0.1], "difference_lo": [-0.05, -0.3, -0.2],
                      "difference_hi": [0.2, -0.1, 0.0]}).to_parquet(difference_paths[layer])
    out, out_differences = tmp_path / "domain.tsv", tmp_path / "domain_differences.tsv"
    probe_stages.probe_table(paths, out, difference_paths, out_differences, control_paths)
    table = pd.read_csv(out, sep="\t", dtype={"layer": str})
    assert list(table.columns[:3]) == ["layer", "task", "representation"]
    assert list(table.columns[-6:]) == ["n_resamples", "control_task", "control_test_macro_f1", "selectivity",
                                        "selectivity_lo", "selectivity_hi"]
    assert "test_macro_f1_samples" not in table and "test_rows_sha1" not in table  # per-layer files only
    assert list(table["layer"]) == ["embed"] * 5 + ["3"] * 5
    assert (table["control_task"] == "domain_control").all()
    np.testing.assert_allclose(table["selectivity"], table["test_macro_f1"] - table["control_test_macro_f1"])
    assert table.loc[(table["layer"] == "3") & (table["representation"] == "h"), "selectivity"].item() == \
        pytest.approx(0.9 - 0.3)
    # The paired interval: percentiles of the per-resample differences, cell by cell.
    expected = np.concatenate([np.percentile(ours - theirs, [2.5, 97.5], axis=1).T
                               for ours, theirs in (samples["embed"], samples["3"])])
    np.testing.assert_allclose(table[["selectivity_lo", "selectivity_hi"]], expected, rtol=1e-5)
    differences = pd.read_csv(out_differences, sep="\t", dtype={"layer": str})
    assert list(differences["layer"]) == ["embed"] * 3 + ["3"] * 3 and differences.columns[0] == "layer"
    # Without a control: no selectivity columns.
    probe_stages.probe_table(paths, out, difference_paths, out_differences)
    assert "selectivity" not in pd.read_csv(out, sep="\t").columns
    # Control tables over other test rows, or from before the samples were kept: a clear error.
    _layer_table("domain_control", [0.3] * 5, samples=samples["3"][1], digest="other rows").to_parquet(
        control_paths["3"])
    with pytest.raises(probe_stages.UnpairedControl, match="layer 3.*different test rows.*do not pair up"):
        probe_stages.probe_table(paths, out, difference_paths, out_differences, control_paths)
    _layer_table("domain_control", [0.3] * 5).to_parquet(control_paths["3"])
    with pytest.raises(probe_stages.UnpairedControl, match="predate.*snakemake -R fit_probe"):
        probe_stages.probe_table(paths, out, difference_paths, out_differences, control_paths)


def test_probe_heatmap_annotates_intervals_and_marks_hhat_when_hhat_minus_r_contains_zero(tmp_path):
    from pndecomp.figures import probe_heatmap, probe_heatmap_cells
    from pndecomp.representations import REPRESENTATIONS

    f1 = [0.534, 0.6, 0.7, 0.4, 0.8]
    table = pd.concat([_layer_table("domain", f1, [0.451, 0.5, 0.6, 0.3, 0.7], [0.612, 0.7, 0.8, 0.5, 0.9])
                       .assign(layer=layer) for layer in ("0", "7")], ignore_index=True)
    differences = pd.DataFrame({"layer": ["0", "0", "7", "7"], "representation_a": "hhat",
                                "representation_b": ["r", "h", "r", "h"], "difference": [0.3, 0.1, 0.3, 0.1],
                                "difference_lo": [-0.01, -0.2, 0.05, -0.2], "difference_hi": [0.4, 0.3, 0.5, 0.3]})
    values, annotations, marked = probe_heatmap_cells(table, differences)
    labels = [rep.label for rep in REPRESENTATIONS.values()]
    assert list(values.columns) == labels and list(values.index) == ["0", "7"]
    assert annotations.at["0", "h"] == "0.53\n[0.45, 0.61]"
    hhat = REPRESENTATIONS["hhat"].label
    # ĥ − r: layer 0's interval contains 0 (marked), layer 7's does not; ĥ − h is not what marks.
    assert marked.to_numpy().sum() == 1 and marked.at["0", hhat] and not marked.at["7", hhat]
    assert annotations.at["0", hhat] == "0.70~\n[0.60, 0.80]" and annotations.at["7", hhat] == "0.70\n[0.60, 0.80]"
    probe_heatmap(table, "domain", tmp_path / "a.png", tmp_path / "a.pdf", differences=differences)
    assert (tmp_path / "a.png").stat().st_size > 1000
    # No intervals (metrics.bootstrap: 0): the value alone, nothing marked.
    bare = table.drop(columns=["test_macro_f1_lo", "test_macro_f1_hi"])
    no_intervals = differences.assign(difference_lo=np.nan, difference_hi=np.nan)
    _, annotations, marked = probe_heatmap_cells(bare, no_intervals)
    assert annotations.at["0", "h"] == "0.53" and not marked.to_numpy().any()
    probe_heatmap(bare, "domain", tmp_path / "b.png", tmp_path / "b.pdf")
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_h_mean_is_the_mean_of_the_stored_states_before_the_last_position(tmp_path, tiny_model_dir):
    """extract_probe_features: h_mean = mean over positions 1..T-1 of the states rounded through the
    storage dtype; h is the last one, r = h − ĥ."""
    import torch
    from safetensors.torch import load_file

    from pndecomp import extract, lm, model_files
    from pndecomp.predictor import build_predictor
    from pndecomp.predictor_kinds import AttentionConfig

    model = lm.load_model(model_files.ModelSource(str(tiny_model_dir)))
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(5, 12))
    torch.manual_seed(0)
    predictor = build_predictor(AttentionConfig(d_model=model.config.hidden_size, n_heads=2, d_head=8)).eval()
    out = tmp_path / "layer-2.safetensors"
    extract.extract_probe_features(model, tokens, {2: predictor}, {2: str(out)}, batch_size=2,
                                   device=torch.device("cpu"), storage_dtype=torch.float16, metadata={})
    features = load_file(str(out))
    hidden = lm.ResidualCapture(model, [2]).run(torch.from_numpy(tokens))[2].to(torch.float16).float()
    assert set(features) == {"h", "h_mean", "hhat", "r"}
    torch.testing.assert_close(features["h"], hidden[:, -1])
    torch.testing.assert_close(features["h_mean"], hidden[:, :-1].mean(dim=1))
    assert not torch.allclose(features["h_mean"], hidden.mean(dim=1))  # position T is not in it
    torch.testing.assert_close(features["r"], features["h"] - features["hhat"])


def test_probe_and_figure_modules_do_not_import_torch():
    """fit_probe, probe_table and draw_* jobs never use torch: importing it would cost seconds per job."""
    code = ("import sys, pndecomp.stages.probes, pndecomp.figures, pndecomp.script; "
            "sys.exit('torch' in sys.modules or 'transformers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
