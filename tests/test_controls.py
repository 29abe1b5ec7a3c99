"""Control tasks whose units recur across the probe splits, and selectivity's paired bootstrap interval
(docs/method.md §9). Every expected value is computed here independently with numpy
and sklearn.metrics.f1_score."""
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score
from test_windows import CharTokenizer

from pndecomp import bootstrap
from pndecomp.corpus import Document
from pndecomp.probes import fit_and_score
from pndecomp.splits import PROBE_SPLITS
from pndecomp.stages import probes as probe_stages
from pndecomp.tasks import TASKS, Control, control_labels
from pndecomp.windows import build_windows, select_windows

FRACTIONS = {"predictor_train": 0.1, "predictor_eval": 0.1, "probe_train": 0.5, "probe_val": 0.1, "probe_test": 0.2}
DOMAINS = ("w", "x", "y", "z")


def zipf_documents(n, n_types=400, exponent=1.1, length=6, seed=0):
    """n documents of ``length`` characters drawn from ``n_types`` characters with Zipf frequencies
    (rank^-exponent), so the last-token units recur across splits, and balanced domain labels."""
    rng = np.random.default_rng(seed)
    alphabet = np.array([chr(0x100 + i) for i in range(n_types)])
    weights = 1 / np.arange(1, n_types + 1) ** exponent
    labels = np.resize(np.array(DOMAINS), n)
    rng.shuffle(labels)
    return [Document(f"doc{i}", "".join(rng.choice(alphabet, size=length, p=weights / weights.sum())), str(label),
                     f"g{i}") for i, label in enumerate(labels)]


def domain_control_windows(n_docs=6000, seed=0):
    """The probe windows of domain and domain_control (the domain task's windows, every split) from
    ``zipf_documents``, through build_windows and select_windows as the pipeline runs them."""
    tasks = [TASKS["domain"], TASKS["domain_control"]]
    frame, _ = build_windows(zipf_documents(n_docs, seed=seed), CharTokenizer(), length=6, per_document=1,
                             prepend_bos=False, fractions=FRACTIONS, seed=0, tasks=tasks)
    caps = {"domain": {split: 10_000 for split in PROBE_SPLITS}}
    probe = select_windows(frame, predictor_counts={}, probe_caps=caps, tasks=tasks)["probe"]
    return probe[probe["in_domain_control"]].reset_index(drop=True)


def _split_arrays(probe, features, label_column):
    parts = []
    for split in PROBE_SPLITS:
        rows = (probe["split"] == split).to_numpy()
        parts += [features[rows], probe[label_column].to_numpy()[rows]]
    return parts


# --- units --------------------------------------------------------------------------------


def test_every_control_task_uses_a_unit_that_recurs_across_splits():
    """The document (or its group) never recurs across the document-disjoint probe splits: refused."""
    controls = [task for task in TASKS.values() if task.control is not None]
    assert {task.control.unit for task in controls} == {"last_token"}
    assert TASKS["domain_control"].description.endswith("(random domain per last token id)")
    with pytest.raises(ValueError, match="recurs across the probe splits"):
        Control("domain", "doc")
    assert Control("domain", "last_token").unit_of(np.array([5, 9, 42])) == 42


def test_domain_control_labels_are_per_last_token_in_every_split():
    """Same last token id → same control label, in every split; the units recur across the splits;
    the label does not follow the document's domain."""
    probe = domain_control_windows(3000)
    last = probe["tokens"].map(lambda tokens: int(tokens[-1]))
    assert probe.groupby(last)["domain_control"].nunique().max() == 1
    splits_per_unit = probe.groupby(last)["split"].nunique()
    # Most windows' units occur in all three probe splits (0.77 here; a per-document unit: 0).
    assert (splits_per_unit.reindex(last).to_numpy() == 3).mean() > 0.7
    assert (probe["domain_control"] == probe["domain"]).mean() < 0.4  # ≈ 1/4 for independent labels


def test_control_labels_follow_the_base_class_frequencies():
    """20,000 units with one row each, base rows 50/30/15/5 %: the units' control labels follow those
    shares (chi-square goodness of fit, p > 0.001), and every row of a unit gets the unit's label."""
    from scipy.stats import chisquare

    shares = {"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.05}
    n = 20_000
    base = [label for label, share in shares.items() for _ in range(round(share * n))]
    units = list(range(n))  # token ids, as build_windows passes them
    labels = control_labels(units, base, seed=7, task="domain_control")
    observed = pd.Series(labels).value_counts().reindex(list(shares)).to_numpy()
    assert chisquare(observed, [share * n for share in shares.values()]).pvalue > 1e-3
    # The same units again, in other rows (other splits): the same labels.
    again = control_labels([*units, *units[:50]], [*base, *["a"] * 50], seed=7, task="domain_control")
    assert again[n:] == labels[:50]


# --- what a probe can get from a control ------------------------------------------------------


def test_unit_features_reach_the_control_ceiling_and_random_features_chance():
    """One-hot of the last token id (the unit, nothing else) reaches the ceiling of the domain control:
    the macro-F1 of a lookup table unit → its control label as seen in probe_train (units unseen in train
    → the most frequent train class). Random Gaussian features give at most chance, 1/K for K = 4
    classes: ~1200 test windows, macro-F1's sampling SD ≈ sqrt(1/4 · 3/4 / 1200) ≈ 0.0125, margin 0.05."""
    probe = domain_control_windows()
    last = probe["tokens"].map(lambda tokens: int(tokens[-1])).to_numpy()
    y = probe["domain_control"].to_numpy()
    train, test = (probe["split"] == "probe_train").to_numpy(), (probe["split"] == "probe_test").to_numpy()
    assert test.sum() > 1000 and len(set(y[test])) == len(DOMAINS)

    # The ceiling: a lookup table fitted on probe_train.
    table = dict(zip(last[train], y[train]))
    values, sizes = np.unique(y[train], return_counts=True)
    fallback = values[np.argmax(sizes)]
    lookup = np.array([table.get(unit, fallback) for unit in last[test]])
    labels = sorted(set(y[train]) | set(y[test]))
    ceiling = f1_score(y[test], lookup, labels=labels, average="macro", zero_division=np.nan)
    assert ceiling > 0.9  # units recur: memorising them nearly solves the control

    ids = np.unique(last)
    one_hot = (last[:, None] == ids[None, :]).astype(float)
    memorised = fit_and_score(*_split_arrays(probe, one_hot, "domain_control"), c_grid=(0.1, 1.0, 10.0, 100.0))
    assert memorised["test_macro_f1"] == pytest.approx(ceiling, abs=0.02)

    noise = np.random.default_rng(3).normal(size=(len(probe), 8))
    chance = fit_and_score(*_split_arrays(probe, noise, "domain_control"))
    assert chance["test_macro_f1"] <= 1 / len(DOMAINS) + 0.05


# --- selectivity with a paired bootstrap interval ---------------------------------------------

FEATURES_MODEL = {"path": "model", "gguf_file": None, "revision": None, "weights_sha256": "0" * 64}


def _write_probe_inputs(tmp_path, n_docs=150, per_doc=2, d=5, seed=0):
    """A probe-windows Parquet file (domain and its control on the same windows; documents 2k and 2k + 1
    share a near-duplicate group) and one features file per layer (h carries the domain)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    doc = np.repeat(np.arange(n_docs), per_doc)
    group = doc // 2
    split = np.array(["probe_train", "probe_train", "probe_val", "probe_test", "probe_test"])[group % 5]
    domain = np.array(["a", "b", "c"])[rng.integers(0, 3, size=n_docs)][doc]
    token = rng.zipf(1.5, size=len(doc)) % 40
    frame = pd.DataFrame({"window_id": [f"doc{i}@{k}" for i, k in zip(doc, np.tile(np.arange(per_doc), n_docs))],
                          "doc_id": [f"doc{i}" for i in doc], "group": [f"g{g}" for g in group], "split": split,
                          "domain": domain, "domain_control": control_labels(token, domain, seed=0, task="dc"),
                          "in_domain": True, "in_domain_control": True})
    windows = tmp_path / "probe.parquet"
    frame.to_parquet(windows)
    features = {}
    centres = {c: 1.5 * np.eye(d)[i] for i, c in enumerate("abc")}
    for layer in (1, 2):
        h = rng.normal(size=(len(frame), d)) + np.stack([centres[c] for c in domain])
        tensors = {"h": h, "h_mean": rng.normal(size=h.shape), "hhat": h + rng.normal(size=h.shape),
                   "r": rng.normal(size=h.shape) + 0.3 * (domain == "a")[:, None]}
        features[layer] = tmp_path / f"layer-{layer}.safetensors"
        metadata = {"experiment": "features", "seed": 0, "model": FEATURES_MODEL, "layer": layer}
        save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(features[layer]),
                  {key: json.dumps(value) for key, value in metadata.items()})
    return frame, windows, features


def _config(n_resamples, seed=0):
    return {"experiment": "probes", "seed": seed, "probes": {"c_grid": [0.1, 1.0], "max_iter": 500,
                                                             "min_test_per_class": 1},
            "metrics": {"bootstrap": n_resamples}}


def _fit_all(tmp_path, windows, features, config, tag="", tasks=("domain", "domain_control")):
    paths = {task: {} for task in tasks}
    for task in tasks:
        for layer, path in features.items():
            out = tmp_path / f"{task}{tag}-{layer}.parquet"
            probe_stages.fit_probe(config, task, str(windows), str(path), str(out),
                                   str(tmp_path / f"{task}{tag}-{layer}_differences.parquet"))
            paths[task][str(layer)] = out
    return paths


def test_selectivity_interval_is_the_paired_bootstrap_of_the_f1_difference(tmp_path):
    """probe_table's selectivity_lo/hi: refit both probes (deterministic), rescore their test predictions
    with sklearn's f1_score on the rows of every resample of the test groups (resample_counts, groups
    numbered in order of first appearance), take base − control per resample and its 2.5/97.5
    percentiles: they equal the table's, for every (layer, representation)."""
    from safetensors.numpy import load_file

    from pndecomp.representations import REPRESENTATIONS

    frame, windows, features = _write_probe_inputs(tmp_path)
    n_resamples = 50
    paths = _fit_all(tmp_path, windows, features, _config(n_resamples))
    out = tmp_path / "domain.tsv"
    probe_stages.probe_table(paths["domain"], out, control_paths=paths["domain_control"])
    table = pd.read_csv(out, sep="\t", dtype={"layer": str}).set_index(["layer", "representation"])

    rows = {split: np.flatnonzero(frame["split"] == split) for split in PROBE_SPLITS}
    test_groups, _ = pd.factorize(frame["group"].to_numpy()[rows["probe_test"]])
    n_groups = test_groups.max() + 1
    assert n_groups == 30 and (table["n_test_documents"] == n_groups).all()  # 60 test documents, 30 groups
    counts = bootstrap.resample_counts(n_groups, n_resamples, 0)
    resampled = [np.repeat(np.arange(len(test_groups)), row[test_groups]) for row in counts]
    for layer, path in features.items():
        tensors = load_file(str(path))
        for name, representation in REPRESENTATIONS.items():
            x = representation.build(tensors)
            samples = []
            for column in ("domain", "domain_control"):
                y = frame[column].to_numpy()
                fit = fit_and_score(*(part for split in PROBE_SPLITS for part in (x[rows[split]], y[rows[split]])),
                                    c_grid=(0.1, 1.0), max_iter=500)
                y_test, predicted = y[rows["probe_test"]], fit["test_predictions"]
                labels = sorted(set(y[rows["probe_train"]]) | set(y_test))
                samples.append(np.array([f1_score(y_test[r], predicted[r], labels=labels, average="macro",
                                                  zero_division=np.nan) for r in resampled]))
            difference = samples[0] - samples[1]
            assert np.isfinite(difference).all()
            cell = table.loc[(str(layer), name)]
            assert (cell["selectivity_lo"], cell["selectivity_hi"]) == pytest.approx(
                tuple(np.percentile(difference, [2.5, 97.5])), rel=1e-5, abs=1e-6)  # the TSV's 6 digits
            assert cell["selectivity_lo"] <= cell["selectivity"] <= cell["selectivity_hi"]
    assert (table.loc[(slice(None), "h"), "selectivity_lo"] > 0).all()  # h carries the domain, not the tokens

    # metrics.bootstrap: 0 -> the same selectivity, its interval NaN.
    paths_off = _fit_all(tmp_path, windows, {1: features[1]}, _config(0), tag="-off")
    probe_stages.probe_table(paths_off["domain"], out, control_paths=paths_off["domain_control"])
    off = pd.read_csv(out, sep="\t", dtype={"layer": str}).set_index(["layer", "representation"])
    np.testing.assert_allclose(off["selectivity"], table.loc["1", "selectivity"])
    assert off[["selectivity_lo", "selectivity_hi"]].isna().all().all()


def test_selectivity_refuses_a_control_resampled_over_other_rows_or_resamples(tmp_path):
    frame, windows, features = _write_probe_inputs(tmp_path)
    features = {1: features[1]}
    paths = _fit_all(tmp_path, windows, features, _config(50))
    out = tmp_path / "domain.tsv"
    # A control whose test rows differ from its base's by one window.
    test_row = np.flatnonzero(frame["split"] == "probe_test")[0]
    other = tmp_path / "other.parquet"
    frame.assign(in_domain_control=frame.index != test_row).to_parquet(other)
    shifted = _fit_all(tmp_path, other, features, _config(50), tag="-other", tasks=("domain_control",))
    with pytest.raises(probe_stages.UnpairedControl, match="different test rows.*do not pair up"):
        probe_stages.probe_table(paths["domain"], out, control_paths=shifted["domain_control"])
    # The same rows, resampled with another seed or another number of resamples.
    for tag, config, what in (("-seed", _config(50, seed=1), "seed"), ("-count", _config(60), "resample count")):
        unpaired = _fit_all(tmp_path, windows, features, config, tag=tag, tasks=("domain_control",))
        with pytest.raises(probe_stages.UnpairedControl, match=f"different {what}"):
            probe_stages.probe_table(paths["domain"], out, control_paths=unpaired["domain_control"])
    assert not out.exists()
