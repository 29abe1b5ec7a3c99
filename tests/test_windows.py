import numpy as np
import pandas as pd
import pytest

from pndecomp.corpus import Document
from pndecomp.splits import PROBE_SPLITS, SPLITS, split_of
from pndecomp.tasks import TASKS
from pndecomp.windows import build_windows, select_windows, window_starts

PAPER_TASKS = [TASKS["domain"], TASKS["next_token_type_8"]]
FRACTIONS = {"predictor_train": 0.4, "predictor_eval": 0.1, "probe_train": 0.3, "probe_val": 0.1, "probe_test": 0.1}


class CharTokenizer:
    """One token per character: token ids are code points (no special tokens)."""

    bos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

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


def test_prepend_bos():
    frame, _ = build_windows([Document("d", "x" * 30, None, "d")], CharTokenizer(), length=10, per_document=1,
                             prepend_bos=True, fractions=FRACTIONS, seed=0, tasks=PAPER_TASKS)
    tokens = np.concatenate([[1], [ord("x")] * 30])
    start = frame.iloc[0]["start"]
    assert list(frame.iloc[0]["tokens"]) == list(tokens[start:start + 10])


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
