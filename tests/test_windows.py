import numpy as np
import pandas as pd
import pytest

from pndecomp.corpus import Document
from pndecomp.splits import PROBE_SPLITS, SPLITS, split_of
from pndecomp.tasks import TASKS
from pndecomp.windows import build_windows, select_windows, window_starts

PAPER_TASKS = [TASKS["domain"], TASKS["next_token_type_8"]]
FRACTIONS = {"predictor_train": 0.35, "predictor_val": 0.05,
             "predictor_eval": 0.1, "probe_train": 0.3, "probe_val": 0.1, "probe_test": 0.1}


class CharTokenizer:
    """One token per character: token ids are code points (no special tokens)."""

    bos_token_id = 1

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) for c in text] for text in texts]}

    def decode(self, ids):
        return "".join(map(chr, ids))


def test_window_starts_non_overlapping_inside_document():
    for n_tokens in (10, 25, 99, 1000):
        starts = window_starts(n_tokens, 10, 4, seed=0, doc_id=f"d{n_tokens}")
        assert len(starts) == min(4, n_tokens // 10)
        assert all(0 <= s and s + 10 <= n_tokens for s in starts)
        assert all(b - a >= 10 for a, b in zip(starts, starts[1:]))
    assert window_starts(9, 10, 4, seed=0, doc_id="short") == []
    assert window_starts(500, 10, 3, 0, "x") == window_starts(500, 10, 3, 0, "x")
    assert window_starts(500, 10, 3, 0, "x") != window_starts(500, 10, 3, 1, "x")


def test_split_is_stable_and_follows_fractions():
    keys = [f"doc{i}" for i in range(20000)]
    splits = pd.Series([split_of(k, FRACTIONS, 0) for k in keys])
    shares = splits.value_counts(normalize=True)
    for name, share in FRACTIONS.items():
        assert shares[name] == pytest.approx(share, abs=0.015)
    assert list(splits) == [split_of(k, FRACTIONS, 0) for k in keys]
    with pytest.raises(ValueError, match="unknown split"):
        split_of("x", {"train": 1.0}, 0)


def make_documents(n=200):
    rng = np.random.default_rng(0)
    docs = []
    for i in range(n):
        length = int(rng.integers(5, 80))
        text = "".join(rng.choice(list("ab c\n(1"), size=length))
        docs.append(Document(doc_id=f"doc{i}", text=text, label=f"class{i % 3}", group=f"g{i // 2}"))
    return docs


def test_windows_from_one_document_and_one_split():
    docs = make_documents()
    frame, counts = build_windows(docs, CharTokenizer(), length=20, per_document=2, prepend_bos=False,
                                  fractions=FRACTIONS, seed=0, tasks=PAPER_TASKS)
    by_id = {d.doc_id: d for d in docs}
    assert counts["documents"] == 200
    assert counts["skipped_short"] == sum(len(d.text) < 20 for d in docs)
    for row in frame.itertuples():
        text = by_id[row.doc_id].text
        assert CharTokenizer().decode(row.tokens) == text[row.start:row.start + 20]
        assert row.domain == by_id[row.doc_id].label
    # no document, and no near-duplicate group, ever appears in two splits
    assert frame.groupby("doc_id")["split"].nunique().max() == 1
    assert frame.groupby("group")["split"].nunique().max() == 1
    last = frame.iloc[0]
    assert last["next_token_type"] in {"alpha", "whitespace", "newline", "open_bracket", "digit"}


def test_prepend_bos_starts_every_window():
    """BOS + T − 1 document tokens per window, wherever the window starts (not only at offset 0)."""
    text = "".join(chr(ord("a") + i % 26) for i in range(60))
    frame, _ = build_windows([Document("d", text, None, "d")], CharTokenizer(), length=10, per_document=6,
                             prepend_bos=True, fractions=FRACTIONS, seed=0, tasks=PAPER_TASKS)
    assert len(frame) == 6 and (frame["start"] > 0).any()
    for start, tokens in zip(frame["start"], frame["tokens"]):
        assert list(tokens) == [1, *map(ord, text[start:start + 9])]
    short, counts = build_windows([Document("s", "x" * 9, None, "s")], CharTokenizer(), length=10, per_document=1,
                                  prepend_bos=True, fractions=FRACTIONS, seed=0, tasks=PAPER_TASKS)
    assert len(short) == 1 and counts.get("skipped_short", 0) == 0  # 9 tokens + BOS fill a window


def test_documents_are_tokenized_in_batches_with_the_same_ids():
    calls = []

    class Counting(CharTokenizer):
        def __call__(self, texts, add_special_tokens=False):
            calls.append(len(texts))
            return super().__call__(texts, add_special_tokens)

    docs = make_documents(150)
    frame, counts = build_windows(docs, Counting(), length=10, per_document=1, prepend_bos=False,
                                  fractions=FRACTIONS, seed=0, tasks=PAPER_TASKS)
    assert counts["documents"] == 150 and calls == [64, 64, 22]
    by_doc = {doc.doc_id: doc.text for doc in docs}
    for doc_id, start, tokens in zip(frame["doc_id"], frame["start"], frame["tokens"]):
        assert list(tokens) == list(map(ord, by_doc[doc_id][start:start + 10]))


def test_selection_counts_caps_and_task_membership():
    frame, _ = build_windows(make_documents(600), CharTokenizer(), length=10, per_document=3, prepend_bos=False,
                             fractions=FRACTIONS, seed=0, tasks=PAPER_TASKS)
    caps = {"domain": {s: 5 for s in PROBE_SPLITS}, "next_token_type_8": {s: 7 for s in PROBE_SPLITS}}
    selected = select_windows(frame, predictor_counts={"predictor_train": 30, "predictor_eval": 10},
                              probe_caps=caps, tasks=PAPER_TASKS)
    assert len(selected["predictor_train"]) == 30 and set(selected["predictor_train"]["split"]) == {"predictor_train"}
    probe = selected["probe"]
    for split in PROBE_SPLITS:
        part = probe[probe["split"] == split]
        assert part[part["in_domain"]]["domain"].value_counts().max() == 5
        assert part["in_next_token_type_8"].sum() == 7
        assert (part["in_domain"] | part["in_next_token_type_8"]).all()
    assert set(probe["split"]) == set(PROBE_SPLITS)
    assert set(SPLITS) >= set(frame["split"])


def test_token_type_windows_reuse_domain_windows_first():
    frame, _ = build_windows(make_documents(600), CharTokenizer(), length=10, per_document=3, prepend_bos=False,
                             fractions=FRACTIONS, seed=0, tasks=PAPER_TASKS)
    caps = {"domain": {s: 10 for s in PROBE_SPLITS}, "next_token_type_8": {s: 12 for s in PROBE_SPLITS}}
    probe = select_windows(frame, predictor_counts={}, probe_caps=caps, tasks=PAPER_TASKS)["probe"]
    assert (probe["in_domain"] | ~probe["in_next_token_type_8"]).all()  # token-type ⊆ domain
    assert len(probe) == 3 * 3 * 10


# --- control tasks (Hewitt & Liang 2019) ------------------------------------------------------


def test_control_tasks_probe_exactly_their_base_tasks_windows():
    """Selectivity compares F1 with F1_control on the same windows, and the controls add no LM pass."""
    tasks = [*PAPER_TASKS, TASKS["domain_control"], TASKS["next_token_type_8_control"]]
    frame, _ = build_windows(make_documents(600), CharTokenizer(), length=10, per_document=3, prepend_bos=False,
                             fractions=FRACTIONS, seed=0, tasks=tasks)
    caps = {"domain": {s: 10 for s in PROBE_SPLITS}, "next_token_type_8": {s: 40 for s in PROBE_SPLITS}}
    probe = select_windows(frame, predictor_counts={}, probe_caps=caps, tasks=tasks)["probe"]
    alone = select_windows(frame, predictor_counts={}, probe_caps=caps, tasks=PAPER_TASKS)["probe"]
    assert list(probe["window_id"]) == list(alone["window_id"])
    assert (probe["in_domain_control"] == probe["in_domain"]).all()
    assert (probe["in_next_token_type_8_control"] == probe["in_next_token_type_8"]).all()
    assert probe["in_next_token_type_8"].sum() > probe["in_domain"].sum()  # the two bases differ

CONTROL_FRACTIONS = {"predictor_train": 0.1, "predictor_eval": 0.1, "probe_train": 0.4, "probe_val": 0.1,
                     "probe_test": 0.3}


def labelled_documents(n, shares=(("x", 0.6), ("y", 0.3), ("z", 0.1)), length=12, seed=0):
    """n documents of ``length`` characters whose labels follow ``shares`` exactly (in a shuffled order)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([[label] * round(share * n) for label, share in shares])[:n]
    rng.shuffle(labels)
    return [Document(f"doc{i}", "".join(rng.choice(list("abcdef 1("), size=length)), str(label), f"g{i}")
            for i, label in enumerate(labels)]


def test_control_labels_are_a_stable_function_of_unit_and_seed():
    """The same unit gets the same control label in every window, whatever the corpus order, and in
    another Python process with another hash seed (no salted hash())."""
    import os
    import subprocess
    import sys

    from pndecomp.tasks import control_labels

    units = [f"u{i}" for i in range(300)]
    base = [["x", "y", "z"][i % 3] for i in range(300)]
    labels = control_labels(units, base, seed=0, task="domain_control")
    assert labels == control_labels(units[::-1], base[::-1], seed=0, task="domain_control")[::-1]
    assert labels != control_labels(units, base, seed=1, task="domain_control")
    # Several rows of one unit: one label (the unit's), and rows without a base label get none.
    assert control_labels(["u", "u", "v", "u"], ["x", "x", None, "x"], seed=0, task="t")[:2] == \
        [control_labels(["u"], ["x"], seed=0, task="t")[0]] * 2
    assert control_labels(["u", "v"], ["x", None], seed=0, task="t")[1] is None
    code = ("from pndecomp.tasks import control_labels; units = [f'u{i}' for i in range(300)]; "
            "print(control_labels(units, [['x', 'y', 'z'][i % 3] for i in range(300)], seed=0, task='domain_control'))")
    for hash_seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": hash_seed}).stdout
        assert out.strip() == str(labels)


def test_control_labels_follow_the_empirical_distribution_over_rows():
    """Over 6000 units with base shares 60/30/10 % of the rows, the control shares of the units match
    within 0.025 (binomial SD ≤ 0.0064 each, so ~4 SD); every row of a unit gets the unit's label."""
    from pndecomp.tasks import control_labels

    n = 6000
    units = [f"u{i}" for i in range(n)]
    base = ["x"] * 3600 + ["y"] * 1800 + ["z"] * 600
    labels = control_labels(units, base, seed=3, task="t")
    shares = pd.Series(labels).value_counts(normalize=True)
    for label, share in (("x", 0.6), ("y", 0.3), ("z", 0.1)):
        assert shares[label] == pytest.approx(share, abs=0.025)
    # Rows, not distinct units, set the distribution (Hewitt & Liang: tags over tokens): 6000 more rows
    # of one unit labelled "z" make z the majority, and all of them get that unit's one label.
    repeated = control_labels([*units, *["u0"] * 6000], [*base, *["z"] * 6000], seed=3, task="t")
    shares = pd.Series(repeated[:n]).value_counts(normalize=True)
    assert shares["z"] == pytest.approx((600 + 6000) / 12000, abs=0.025)
    assert set(repeated[n:]) == {repeated[0]}
    # Independent of the base label of the unit: the control is not the real label in disguise.
    agreement = np.mean(np.array(labels[:n]) == np.array(base))
    assert agreement == pytest.approx(0.6 * 0.6 + 0.3 * 0.3 + 0.1 * 0.1, abs=0.03)


def test_build_windows_adds_control_labels_per_unit_even_without_the_base_task():
    docs = labelled_documents(900)
    controls = [TASKS["domain_control"], TASKS["next_token_type_8_control"]]
    frame, _ = build_windows(docs, CharTokenizer(), length=5, per_document=2, prepend_bos=False,
                             fractions=CONTROL_FRACTIONS, seed=0, tasks=controls)
    # Base label columns are computed internally, not kept.
    assert "domain" not in frame and "next_token_type" not in frame
    # Both controls label by the last token id (a unit every split has), not by document.
    last_token = frame["tokens"].map(lambda tokens: int(tokens[-1]))
    for column in ("domain_control", "next_token_type_control"):
        assert frame.groupby(last_token)[column].nunique().max() == 1
    assert frame.groupby(last_token)["split"].nunique().min() == 5  # 9 characters, 1800 windows
    assert frame.groupby("doc_id")["domain_control"].nunique().max() == 2  # not constant per document
    assert frame["domain_control"].notna().all() and set(frame["domain_control"]) <= {"x", "y", "z"}
    # With the base task as well: the base column is unchanged and the control labels are the same.
    both, _ = build_windows(docs, CharTokenizer(), length=5, per_document=2, prepend_bos=False,
                            fractions=CONTROL_FRACTIONS, seed=0, tasks=[TASKS["domain"], *controls])
    assert list(both["domain_control"]) == list(frame["domain_control"])
    assert list(both["domain"]) == [doc.label for doc in docs for _ in range(2)]
    shuffled, _ = build_windows(docs[::-1], CharTokenizer(), length=5, per_document=2, prepend_bos=False,
                                fractions=CONTROL_FRACTIONS, seed=0, tasks=controls)
    pd.testing.assert_frame_equal(
        shuffled.set_index("window_id").loc[frame["window_id"], ["domain_control", "next_token_type_control"]],
        frame.set_index("window_id")[["domain_control", "next_token_type_control"]])


def _probe_split(frame, task_name, label_column, features):
    from pndecomp.splits import PROBE_SPLITS

    member = frame[f"in_{task_name}"].to_numpy()
    parts = []
    for split in PROBE_SPLITS:
        rows = np.flatnonzero(member & (frame["split"] == split).to_numpy())
        parts += [features[rows], frame[label_column].to_numpy()[rows]]
    return parts


def test_domain_control_is_at_chance_where_the_features_carry_only_the_domain():
    """Features = the document's real domain (a class centre) + noise, nothing of the last token. The
    domain probe is near perfect; the control probe (a random domain per last token id) cannot beat
    chance, since its labels are a function of the token, independent of the domain. Chance for 3
    classes is at most 1/3 (a predictor independent of the truth scores Σ_c 2 p_c q_c / (p_c + q_c) / 3
    ≤ 1/3 at balanced classes and less otherwise); the test split has ~450 windows, so macro-F1's
    sampling SD is about sqrt(1/3 · 2/3 / 450) ≈ 0.022: the margin 0.08 is ~3.6 SD."""
    from pndecomp.probes import fit_and_score

    # 200 characters, Zipf-like frequencies: units recur across splits, and no few units dominate.
    rng = np.random.default_rng(1)
    alphabet = [chr(0x100 + i) for i in range(200)]
    weights = 1 / np.arange(1, 201) ** 0.7
    labels = np.array(["x", "y", "z"] * 500)
    docs = [Document(f"doc{i}", "".join(rng.choice(alphabet, size=5, p=weights / weights.sum())), str(label),
                     f"g{i}") for i, label in enumerate(labels)]
    tasks = [TASKS["domain"], TASKS["domain_control"]]
    frame, _ = build_windows(docs, CharTokenizer(), length=5, per_document=1, prepend_bos=False,
                             fractions=CONTROL_FRACTIONS, seed=0, tasks=tasks)
    caps = {name: {"probe_train": 1000, "probe_val": 1000, "probe_test": 1000} for name in ("domain", "domain_control")}
    probe = select_windows(frame, predictor_counts={}, probe_caps=caps, tasks=tasks)["probe"]
    assert probe["domain_control"].nunique() == 3
    centres = {"x": [4.0, 0, 0], "y": [0, 4.0, 0], "z": [0, 0, 4.0]}
    features = np.stack([centres[label] for label in probe["domain"]]) + rng.normal(size=(len(probe), 3))
    real = fit_and_score(*_probe_split(probe, "domain", "domain", features))
    control = fit_and_score(*_probe_split(probe, "domain_control", "domain_control", features))
    assert real["n_test"] > 400 and real["test_macro_f1"] > 0.9
    assert control["test_macro_f1"] < 1 / 3 + 0.08
    assert real["test_macro_f1"] - control["test_macro_f1"] > 0.5  # the selectivity


def test_token_control_is_learnable_only_by_memorising_token_ids():
    """next_token_type_8_control: with features that identify the last token (one-hot token id) a probe
    memorises the control (token ids recur across splits), while features that carry only the real
    type and no token identity leave it far below the real task: the selectivity is large."""
    from pndecomp.probes import fit_and_score
    from pndecomp.tokentypes import token_type

    # 26 letters and 20 decimal digits (ASCII and Arabic-Indic): two types, many token ids each.
    alphabet = [*map(chr, range(ord("a"), ord("z") + 1)), *map(chr, range(0x660, 0x66A)), *"0123456789"]
    rng = np.random.default_rng(2)
    docs = [Document(f"d{i}", "".join(rng.choice(alphabet, size=8)), None, f"d{i}") for i in range(3000)]
    tasks = [TASKS["next_token_type_8"], TASKS["next_token_type_8_control"]]
    frame, _ = build_windows(docs, CharTokenizer(), length=4, per_document=1, prepend_bos=False,
                             fractions=CONTROL_FRACTIONS, seed=0, tasks=tasks)
    caps = {name: {"probe_train": 5000, "probe_val": 5000, "probe_test": 5000} for name in
            ("next_token_type_8", "next_token_type_8_control")}
    probe = select_windows(frame, predictor_counts={}, probe_caps=caps, tasks=tasks)["probe"]
    last = np.array([int(tokens[-1]) for tokens in probe["tokens"]])
    ids = sorted(set(last))
    one_hot = (last[:, None] == np.array(ids)[None, :]).astype(float)
    is_alpha = np.array([token_type(chr(t)) for t in last]) == "alpha"
    type_only = is_alpha[:, None] + 0.3 * rng.normal(size=(len(probe), 1))
    assert set(probe["next_token_type"]) == {"alpha", "digit"}
    memorised = fit_and_score(*_probe_split(probe, "next_token_type_8_control", "next_token_type_control", one_hot))
    real = fit_and_score(*_probe_split(probe, "next_token_type_8", "next_token_type", type_only))
    control = fit_and_score(*_probe_split(probe, "next_token_type_8_control", "next_token_type_control", type_only))
    assert memorised["test_macro_f1"] > 0.95
    assert real["test_macro_f1"] > 0.9 and real["test_macro_f1"] - control["test_macro_f1"] > 0.25
