"""Tests for pndecomp.corpus: the Pile-format readers and the HF path."""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from test_windows import FRACTIONS, CharTokenizer

from pndecomp.corpus import CorpusError, Document, iter_documents
from pndecomp.splits import PROBE_SPLITS
from pndecomp.tasks import TASKS
from pndecomp.windows import build_windows, select_windows, summarize

RECORDS = [
    {"text": "The first document.", "meta": {"pile_set_name": "Wikipedia (en)", "uid": "w1"}},
    {"text": "def second(): return 2", "meta": {"pile_set_name": "Github", "uid": "g2"}},
    {"text": "Third, with unicode: ∂x/∂t", "meta": {"pile_set_name": "ArXiv", "uid": "a3"}},
]

DEFAULT_CORPUS = {
    "source": "files",
    "on_bad_record": "error",
    "max_documents": None,
    "dedup": "exact",
    "files": {
        "paths": [],
        "text_field": "text",
        "label_field": "meta.pile_set_name",
        "id_field": None,
        "group_field": None,
    },
    "hf": {
        "name": "monology/pile-uncopyrighted",
        "config": None,
        "split": "validation",
        "revision": None,
        "streaming": True,
        "text_field": "text",
        "label_field": "meta.pile_set_name",
        "id_field": None,
        "group_field": None,
    },
}


def corpus_config(paths=(), *, section="files", **overrides) -> dict:
    """The validated config section with defaults; overrides go to the top level or the source section."""
    config = copy.deepcopy(DEFAULT_CORPUS)
    config["files"]["paths"] = [str(p) for p in paths]
    for key, value in overrides.items():
        if key in config:
            config[key] = value
        else:
            config[section][key] = value
    return config


def write_jsonl(path: Path, lines: list) -> Path:
    """Each item is a record (dumped as JSON) or a raw string line."""
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    path.write_text(text, encoding="utf-8")
    return path


def write_zst(path: Path, lines: list, frames: int = 1) -> Path:
    raw = "".join(json.dumps(x) + "\n" for x in lines).encode("utf-8")
    cut = len(raw) // frames if frames > 1 else len(raw)
    chunks = [raw[:cut], raw[cut:]] if frames > 1 else [raw]
    path.write_bytes(b"".join(zstandard.ZstdCompressor().compress(c) for c in chunks))
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def read(config: dict) -> list[Document]:
    return list(iter_documents(config))


# --- readers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["docs.jsonl", "docs.jsonl.zst", "docs.parquet"])
def test_every_format_reads_the_same_documents(tmp_path, name):
    writer = {"docs.jsonl": write_jsonl, "docs.jsonl.zst": write_zst, "docs.parquet": write_parquet}[name]
    path = writer(tmp_path / name, RECORDS)
    docs = read(corpus_config([path]))
    assert [d.text for d in docs] == [r["text"] for r in RECORDS]
    assert [d.label for d in docs] == ["Wikipedia (en)", "Github", "ArXiv"]
    assert [d.doc_id for d in docs] == [f"{name}:1", f"{name}:2", f"{name}:3"]
    assert [d.group for d in docs] == [d.doc_id for d in docs]


def test_zst_with_several_frames_reads_them_all(tmp_path):
    path = write_zst(tmp_path / "multi.jsonl.zst", RECORDS, frames=2)
    assert [d.text for d in read(corpus_config([path]))] == [r["text"] for r in RECORDS]


def test_files_are_read_in_order_and_blank_lines_keep_line_numbers(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [RECORDS[0], "", RECORDS[1]])
    second = write_parquet(tmp_path / "b.parquet", [RECORDS[2]])
    docs = read(corpus_config([first, second]))
    assert [d.doc_id for d in docs] == ["a.jsonl:1", "a.jsonl:3", "b.parquet:1"]


def test_dotted_paths_for_label_id_and_group(tmp_path):
    records = [
        {"body": "alpha text", "meta": {"info": {"source": "S1"}, "uid": "u1", "cluster": "c1"}},
        {"body": "beta text", "meta": {"info": {"source": "S2"}, "uid": "u2", "cluster": "c1"}},
    ]
    for path in (write_jsonl(tmp_path / "d.jsonl", records), write_parquet(tmp_path / "d.parquet", records)):
        config = corpus_config(
            [path],
            text_field="body",
            label_field="meta.info.source",
            id_field="meta.uid",
            group_field="meta.cluster",
        )
        docs = read(config)
        assert [(d.doc_id, d.text, d.label, d.group) for d in docs] == [
            ("u1", "alpha text", "S1", "c1"),
            ("u2", "beta text", "S2", "c1"),
        ]


def test_a_flattened_dotted_key_is_found_as_is(tmp_path):
    path = write_jsonl(tmp_path / "flat.jsonl", [{"text": "x", "meta.pile_set_name": "Enron Emails"}])
    assert read(corpus_config([path]))[0].label == "Enron Emails"


def test_unlabelled_corpus_gives_label_none(tmp_path):
    path = write_jsonl(tmp_path / "plain.jsonl", [{"text": "no meta here"}])
    assert read(corpus_config([path], label_field=None))[0].label is None


def test_max_documents_stops_before_reading_further(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [RECORDS[0], RECORDS[1], "{not json"])
    docs = read(corpus_config([path], max_documents=2))
    assert [d.doc_id for d in docs] == ["d.jsonl:1", "d.jsonl:2"]


# --- reader errors ------------------------------------------------------------------------------


def test_missing_file_is_named_before_reading(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", RECORDS)
    with pytest.raises(CorpusError, match=r"corpus\.files\.paths.*nowhere\.jsonl.*does not exist"):
        iter_documents(corpus_config([good, tmp_path / "nowhere.jsonl"]))  # raises at the call


def test_unknown_extension_lists_the_valid_ones(tmp_path):
    path = tmp_path / "docs.json"
    path.write_text("[]")
    with pytest.raises(CorpusError) as error:
        iter_documents(corpus_config([path]))
    assert "docs.json" in str(error.value)
    for extension in (".jsonl", ".jsonl.zst", ".parquet"):
        assert extension in str(error.value)


def test_repeated_basenames_without_id_field_are_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    paths = [write_jsonl(tmp_path / d / "train.jsonl", RECORDS) for d in ("x", "y")]
    with pytest.raises(CorpusError, match=r"train\.jsonl.*id_field"):
        iter_documents(corpus_config(paths))
    assert len(read(corpus_config(paths, id_field="meta.uid"))) == 6


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_corrupt_zstd_raises_naming_the_file_even_when_skipping(tmp_path, policy):
    path = tmp_path / "bad.jsonl.zst"
    path.write_bytes(b"this is not zstd data" * 10)
    with pytest.raises(CorpusError, match=r"bad\.jsonl\.zst"):
        read(corpus_config([path], on_bad_record=policy))


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_truncated_zstd_raises_instead_of_reading_short(tmp_path, policy):
    records = [{"text": f"document number {i} " * 5, "meta": {"pile_set_name": "A"}} for i in range(3000)]
    full = write_zst(tmp_path / "full.jsonl.zst", records).read_bytes()
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(CorpusError, match=r"cut\.jsonl\.zst.*(truncated|incomplete)"):
        read(corpus_config([path], on_bad_record=policy))


def test_corrupt_parquet_raises_naming_the_file(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 but not really parquet")
    with pytest.raises(CorpusError, match=r"bad\.parquet"):
        read(corpus_config([path]))


def test_malformed_json_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "broken.jsonl", [RECORDS[0], '{"text": "unterminated'])
    with pytest.raises(CorpusError, match=r"broken\.jsonl, line 2: malformed JSON.*on_bad_record: skip"):
        read(corpus_config([path]))


def test_record_without_text_names_field_and_line(tmp_path):
    path = write_jsonl(tmp_path / "notext.jsonl", [RECORDS[0], RECORDS[1], {"content": "x", "meta": {}}])
    with pytest.raises(CorpusError, match=r"notext\.jsonl, line 3: .*no text field 'text'"):
        read(corpus_config([path]))


def test_non_string_text_names_the_type(tmp_path):
    path = write_jsonl(tmp_path / "numtext.jsonl", [{"text": 42, "meta": {"pile_set_name": "A"}}])
    with pytest.raises(CorpusError, match=r"numtext\.jsonl, line 1: text field 'text' holds a int"):
        read(corpus_config([path]))


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_missing_label_names_the_field_path_and_line_even_when_skipping(tmp_path, policy):
    path = write_jsonl(tmp_path / "unlabelled.jsonl", [RECORDS[0], {"text": "no label"}])
    with pytest.raises(CorpusError, match=r"unlabelled\.jsonl, line 2: .*label field 'meta\.pile_set_name'"):
        read(corpus_config([path], on_bad_record=policy))


def test_missing_id_field_is_named(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    with pytest.raises(CorpusError, match=r"line 1: .*id field 'meta\.doc_id'"):
        read(corpus_config([path], id_field="meta.doc_id"))


def test_empty_corpus_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", ["", "   "])
    with pytest.raises(CorpusError, match=r"empty\.jsonl.*no documents"):
        read(corpus_config([path]))


def test_a_corpus_of_only_bad_records_is_empty_when_skipping(tmp_path):
    path = write_jsonl(tmp_path / "allbad.jsonl", ["{oops", {"text": None}])
    with pytest.raises(CorpusError, match=r"no documents.*skipped"):
        read(corpus_config([path], on_bad_record="skip"))


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"source": "embedded"}, "corpus.source"),
        ({"on_bad_record": "ignore"}, "corpus.on_bad_record"),
        ({"max_documents": 0}, "corpus.max_documents"),
        ({"dedup": "fuzzy"}, "corpus.dedup"),
    ],
)
def test_bad_config_values_name_the_key_and_valid_values(tmp_path, overrides, key):
    path = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    with pytest.raises(CorpusError, match=rf"{key.replace('.', r'[.]')} is .*valid"):
        iter_documents(corpus_config([path], **overrides))


def test_skip_mode_skips_and_counts_each_kind(tmp_path, caplog):
    lines = [RECORDS[0], "{bad json", {"meta": {}}, {"text": ["not", "a string"]}, "[1, 2]", RECORDS[1]]
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    with caplog.at_level(logging.INFO, logger="pndecomp.corpus"):
        docs = read(corpus_config([path], on_bad_record="skip"))
    assert [d.doc_id for d in docs] == ["mixed.jsonl:1", "mixed.jsonl:6"]
    message = caplog.text
    assert "read 2 documents, skipped 4 bad records" in message
    for counted in ("'malformed_json': 1", "'missing_text': 2", "'non_string_text': 1"):
        assert counted in message


# --- Hugging Face path --------------------------------------------------------------------------


def test_hf_source_calls_load_dataset_and_maps_fields(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config, kwargs))
        return datasets.Dataset.from_list(RECORDS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    config = corpus_config(
        section="hf", source="hf", name="org/pile", config="all", revision="abc123", streaming=False
    )
    docs = read(config)
    assert calls == [("org/pile", "all", {"split": "validation", "revision": "abc123", "streaming": False})]
    assert [d.label for d in docs] == ["Wikipedia (en)", "Github", "ArXiv"]
    assert [d.doc_id for d in docs] == [f"org/pile/all:validation:{i}" for i in (1, 2, 3)]


def test_hf_source_with_id_field_and_streamed_rows(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: iter(RECORDS))
    docs = read(corpus_config(section="hf", source="hf", id_field="meta.uid", max_documents=2))
    assert [(d.doc_id, d.group) for d in docs] == [("w1", "w1"), ("g2", "g2")]


@pytest.mark.parametrize("as_dict", [False, True])
def test_hf_source_reads_a_save_to_disk_directory(tmp_path, as_dict):
    """A dataset saved with save_to_disk (a Dataset, or a DatasetDict whose corpus.hf.split is chosen) is read
    with load_from_disk, offline; a split it lacks is named with the ones it has."""
    import datasets

    dataset = datasets.Dataset.from_list(RECORDS)
    (datasets.DatasetDict({"validation": dataset}) if as_dict else dataset).save_to_disk(tmp_path / "saved")
    docs = read(corpus_config(section="hf", source="hf", name=str(tmp_path / "saved")))
    assert [d.label for d in docs] == ["Wikipedia (en)", "Github", "ArXiv"]
    assert docs[0].text == RECORDS[0]["text"]
    if as_dict:
        with pytest.raises(CorpusError, match=r"corpus\.hf\.split is 'train'.*\['validation'\]"):
            read(corpus_config(section="hf", source="hf", name=str(tmp_path / "saved"), split="train"))


def test_hf_load_failure_is_a_corpus_error_naming_the_dataset(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CorpusError, match=r"corpus\.hf.*'monology/pile-uncopyrighted'.*no network"):
        iter_documents(corpus_config(section="hf", source="hf"))


def test_dag_time_check_leaves_missing_files_to_snakemake_but_checks_names(tmp_path):
    """require_files=False (pndecomp.config.check, at DAG time): a missing file passes (Snakemake reports it as
    a missing input of make_windows), an unknown extension or clashing names still fail; reading still fails."""
    missing = [tmp_path / "a" / "val.jsonl.zst", tmp_path / "test.parquet"]
    documents = iter_documents(corpus_config(missing), require_files=False)
    with pytest.raises(CorpusError, match=r"val\.jsonl\.zst.*No such file"):
        next(documents)
    with pytest.raises(CorpusError, match="unknown extension"):
        iter_documents(corpus_config([tmp_path / "docs.json"]), require_files=False)
    with pytest.raises(CorpusError, match=r"val\.jsonl\.zst.*id_field"):
        iter_documents(corpus_config([*missing, tmp_path / "b" / "val.jsonl.zst"]), require_files=False)


# --- duplicate groups (corpus.dedup) -------------------------------------------------------------

N_PLANTED = 60


def planted_records() -> list[dict]:
    """N_PLANTED unrelated texts, each with a whitespace variant and a near-duplicate (another first
    line), shuffled; ids are "<text>-<kind>" and labels alternate A/B by text."""
    rng = np.random.default_rng(0)
    vocabulary = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=int(rng.integers(3, 9))))
                  for _ in range(300)]
    records = []
    for i in range(N_PLANTED):
        words = list(rng.choice(vocabulary, size=60))
        variants = {
            "original": " ".join(words),
            "spaced": "\n   ".join(words) + "  \n",
            "edited": f"Copyright (c) {1990 + i} Somebody Else\n" + " ".join(words[1:]),
        }
        records += [{"text": text, "meta": {"pile_set_name": "AB"[i % 2], "uid": f"t{i}-{kind}"}}
                    for kind, text in variants.items()]
    return [records[i] for i in rng.permutation(len(records))]


@pytest.fixture
def planted_corpus(tmp_path) -> Path:
    return write_jsonl(tmp_path / "planted.jsonl", planted_records())


def read_planted(path: Path, dedup: str):
    stream = iter_documents(corpus_config([path], id_field="meta.uid", dedup=dedup))
    return list(stream), stream.duplicates


def first_of(docs: list[Document], text: int, kinds: tuple[str, ...]) -> str:
    return next(d.doc_id for d in docs if d.doc_id in {f"t{text}-{kind}" for kind in kinds})


def test_exact_dedup_groups_whitespace_copies_under_the_first(planted_corpus):
    docs, duplicates = read_planted(planted_corpus, "exact")
    group = {d.doc_id: d.group for d in docs}
    for i in range(N_PLANTED):
        assert group[f"t{i}-original"] == group[f"t{i}-spaced"] == first_of(docs, i, ("original", "spaced"))
        assert group[f"t{i}-edited"] == f"t{i}-edited"  # near, not exact: its own group
    assert duplicates == {"mode": "exact", "groups": N_PLANTED, "documents": 2 * N_PLANTED}


def test_near_dedup_also_groups_edited_copies(planted_corpus):
    docs, duplicates = read_planted(planted_corpus, "near")
    group = {d.doc_id: d.group for d in docs}
    for i in range(N_PLANTED):
        first = first_of(docs, i, ("original", "spaced", "edited"))
        assert group[f"t{i}-original"] == group[f"t{i}-spaced"] == group[f"t{i}-edited"] == first
    assert duplicates == {"mode": "near", "groups": N_PLANTED, "documents": 3 * N_PLANTED}


def test_no_dedup_keeps_group_equal_to_the_document_id(planted_corpus):
    docs, duplicates = read_planted(planted_corpus, "none")
    assert all(d.group == d.doc_id for d in docs)
    assert duplicates == {"mode": "none", "groups": 0, "documents": 0}


def test_a_copy_joins_the_group_field_of_its_first_copy(tmp_path):
    records = [{"text": "same  words", "meta": {"repo": "r1"}}, {"text": "other words", "meta": {"repo": "r2"}},
               {"text": "same words\n", "meta": {"repo": "r3"}}]
    path = write_jsonl(tmp_path / "repos.jsonl", records)
    docs = read(corpus_config([path], label_field=None, group_field="meta.repo"))
    assert [d.group for d in docs] == ["r1", "r2", "r1"]


def test_hf_documents_are_deduplicated_too(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: iter(RECORDS + RECORDS[:1]))
    docs = read(corpus_config(section="hf", source="hf", id_field="meta.uid"))
    assert [(d.doc_id, d.group) for d in docs] == [("w1", "w1"), ("g2", "g2"), ("a3", "a3"), ("w1", "w1")]
    docs = read(corpus_config(section="hf", source="hf"))
    assert docs[3].group == docs[0].doc_id != docs[3].doc_id


@pytest.mark.parametrize("dedup", ["exact", "near", "none"])
def test_no_duplicate_spans_two_splits_after_windowing(planted_corpus, dedup):
    """Windows of planted copies land in one split (all three kinds with near, the exact copies with
    exact); without dedup they leak across splits, which shows the check can fail."""
    stream = iter_documents(corpus_config([planted_corpus], id_field="meta.uid", dedup=dedup))
    tasks = [TASKS["domain"]]
    candidates, counts = build_windows(stream, CharTokenizer(), length=20, per_document=2, prepend_bos=False,
                                       fractions=FRACTIONS, seed=0, tasks=tasks)
    everything = {split: 10**6 for split in ("predictor_train", "predictor_val", "predictor_eval")}
    selected = select_windows(candidates, predictor_counts=everything,
                              probe_caps={"domain": {split: 10**6 for split in PROBE_SPLITS}}, tasks=tasks)
    windows = pd.concat(selected.values(), ignore_index=True)
    assert len(windows) == len(candidates) == 2 * 3 * N_PLANTED
    assert windows.groupby("group")["split"].nunique().max() == 1
    text, kind = windows["doc_id"].str.split("-", expand=True).T.to_numpy()
    exact_copies = windows[kind != "edited"].groupby(text[kind != "edited"])["split"].nunique()
    near_copies = windows.groupby(text)["split"].nunique()
    if dedup == "none":
        assert (exact_copies > 1).sum() > N_PLANTED // 2
    else:
        assert exact_copies.max() == 1
        assert (near_copies.max() == 1) == (dedup == "near")
    assert summarize(selected, counts, tasks, stream.duplicates)["duplicates"] == stream.duplicates
