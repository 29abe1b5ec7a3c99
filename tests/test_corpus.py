"""Tests for pndecomp.corpus: the Pile-format readers, the HF path and the embedded corpus."""
from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pndecomp import corpus as corpus_module
from pndecomp.corpus import (
    EMBEDDED_DOMAINS,
    MANIFEST_COLUMNS,
    CorpusError,
    Document,
    build_embedded_corpus,
    iter_documents,
)

RECORDS = [
    {"text": "The first document.", "meta": {"pile_set_name": "Wikipedia (en)", "uid": "w1"}},
    {"text": "def second(): return 2", "meta": {"pile_set_name": "Github", "uid": "g2"}},
    {"text": "Third, with unicode: ∂x/∂t", "meta": {"pile_set_name": "ArXiv", "uid": "a3"}},
]

DEFAULT_CORPUS = {
    "source": "files",
    "on_bad_record": "error",
    "max_documents": None,
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


def test_hf_load_failure_is_a_corpus_error_naming_the_dataset(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CorpusError, match=r"corpus\.hf.*'monology/pile-uncopyrighted'.*no network"):
        iter_documents(corpus_config(section="hf", source="hf"))


# --- embedded corpus: near-duplicate groups -----------------------------------------------------

MIT = """Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions: The above copyright notice and this
permission notice shall be included in all copies or substantial portions of the Software.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT
OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE."""
UNRELATED = """Gardening notes. Tomatoes want full sun, deep watering twice a week and a stake before the
first truss sets fruit. Basil goes between the rows to keep aphids away; marigolds along the edge
do the same for whitefly. Pinch out side shoots on cordon varieties, but leave bush types alone.
Feed with a high potash liquid once flowers appear and stop watering from above when blight is
about. Harvest when the fruit colours fully and give away what the family cannot eat in time."""


def test_near_duplicate_texts_share_a_group_and_others_do_not():
    ids = ["c", "a", "b", "d"]
    texts = [
        "MIT License\nCopyright (c) 2019 Carol\n\n" + MIT,
        "MIT License\nCopyright (c) 2021 Alice\n\n" + MIT,
        UNRELATED,
        MIT + "\n\n" + UNRELATED,
    ]
    groups = corpus_module._near_duplicate_groups(ids, texts)
    assert groups[0] == groups[1] == "a"  # named by the smallest id
    assert groups[2] == "b"
    assert groups[3] == "d"  # half one, half the other: near neither


def candidate_for(path: Path, domain: str):
    source = corpus_module._SourceFile(path, f"stdlib/{path.name}", "stdlib==3")
    return corpus_module._Candidate(domain, source)


def test_docstrings_keep_prose_and_comments_are_only_real_comments(tmp_path):
    prose = " ".join(["This module explains how the garden is watered in summer and in winter."] * 4)
    module = tmp_path / "garden.py"
    module.write_text(
        f'#!/usr/bin/env python\n# How to water.\n"""{prose}"""\n'
        'x = "# in a string"  # A real comment.\nimport os  # noqa: F401\n'
    )
    assert corpus_module._module_docstring(candidate_for(module, "docstrings")) == prose
    assert corpus_module._comments(candidate_for(module, "code_comments")) == "How to water.\nA real comment."

    table = tmp_path / "table.py"
    table.write_text('"""\n' + "| a | b |\n|---|---|\n| 1 | 2 |\n" * 20 + '"""\nx = 1\n')
    assert corpus_module._module_docstring(candidate_for(table, "docstrings")) is None  # not prose
    late = tmp_path / "late.py"
    late.write_text(f'x = 1\n"""{prose}"""\n')  # a string after code is no docstring
    assert corpus_module._module_docstring(candidate_for(late, "docstrings")) is None


def make_fake_purelib(root: Path) -> Path:
    """A site-packages with two MIT-licensed dists, one unrelated licence and ATen-like headers."""
    purelib = root / "site-packages"
    dists = {"alpha": ("1.0", "MIT License\nCopyright (c) 2020 Alice Example\n\n" + MIT),
             "beta": ("2.1", "MIT License\nCopyright (c) 2023 Bob Sample and contributors\n\n" + MIT),
             "gamma": ("0.3", "The Gardening Licence\n\n" + UNRELATED),
             # gamma's text again, with other white space: an exact duplicate after normalisation
             "epsilon": ("0.1", "The   Gardening Licence\n" + UNRELATED.replace("\n", "\n\n  ") + "\n")}
    for name, (version, licence) in dists.items():
        dist_info = purelib / f"{name}-{version}.dist-info"
        (dist_info / "licenses").mkdir(parents=True)
        (dist_info / "licenses" / "LICENSE").write_text(licence)
        (dist_info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n"
            + f"{name} is a package for testing. " * 12
        )
        (dist_info / "RECORD").write_text(
            f"{name}-{version}.dist-info/METADATA,,\n{name}-{version}.dist-info/licenses/LICENSE,,\n"
            f"{name}-{version}.dist-info/RECORD,,\n"
        )
    ops = purelib / "torch" / "include" / "ATen" / "ops"
    ops.mkdir(parents=True)
    for i in range(10):
        declarations = "".join(f"TORCH_API at::Tensor op{i}_overload{j}();\n" for j in range(12))
        (ops / f"op{i}.h").write_text(f"#pragma once\n// op {i}\n" + declarations)
    for i in range(12):
        (purelib / "torch" / "include" / f"other{i}.h").write_text(
            f"#pragma once\n// header {i}\n" + f"struct Thing{i} {{ int field_{i}; }};\n" * 12
        )
    return purelib


def build_from_fake_purelib(root: Path, cap: int) -> tuple[list[dict], dict[str, str]]:
    """(corpus records, {relative_path: package}) of a build from make_fake_purelib + the stdlib."""
    purelib = make_fake_purelib(root)
    build_embedded_corpus(root / "c.jsonl", root / "m.tsv", max_files_per_domain=cap, venv_purelib=purelib)
    records = [json.loads(line) for line in (root / "c.jsonl").read_text().splitlines()]
    with open(root / "m.tsv", newline="") as f:
        packages = {row["relative_path"]: row["package"] for row in csv.DictReader(f, delimiter="\t")}
    return records, packages


@pytest.fixture(scope="module")
def fake_build(tmp_path_factory):
    return build_from_fake_purelib(tmp_path_factory.mktemp("fake"), cap=10)


LICENCE = "license_texts/site-packages/{}.dist-info/licenses/LICENSE"


def test_embedded_near_duplicate_licences_share_a_group(fake_build):
    records, _ = fake_build
    group = {r["meta"]["doc_id"]: r["meta"]["group"] for r in records}
    alpha, beta = LICENCE.format("alpha-1.0"), LICENCE.format("beta-2.1")
    assert group[alpha] == group[beta] == alpha


def test_embedded_exact_duplicates_keep_one_copy(fake_build):
    records, _ = fake_build
    group = {r["meta"]["doc_id"]: r["meta"]["group"] for r in records}
    copies = (LICENCE.format("gamma-0.3"), LICENCE.format("epsilon-0.1"))
    kept = [doc_id for doc_id in copies if doc_id in group]
    assert len(kept) == 1 and group[kept[0]] == kept[0]  # one copy, near nothing else


def headers_of(records: list[dict]) -> list[str]:
    return [r["meta"]["doc_id"] for r in records if r["meta"]["pile_set_name"] == "c_cpp_headers"]


def test_embedded_aten_ops_headers_are_capped_to_a_tenth(fake_build, tmp_path):
    headers = headers_of(fake_build[0])
    assert (sum("/ATen/ops/" in h for h in headers), len(headers)) == (1, 10)  # 9 others + 1
    # When the other headers cannot fill the domain the share still holds: 12 others + 1.
    headers = headers_of(build_from_fake_purelib(tmp_path, cap=20)[0])
    assert (sum("/ATen/ops/" in h for h in headers), len(headers)) == (1, 13)


def test_embedded_manifest_names_the_owning_distribution(fake_build):
    _, packages = fake_build
    assert packages[LICENCE.format("alpha-1.0").removeprefix("license_texts/")] == "alpha==1.0"
    assert packages["site-packages/beta-2.1.dist-info/METADATA"] == "beta==2.1"
    assert all(p.startswith("stdlib==") for rel, p in packages.items() if rel.startswith("stdlib/"))


def test_embedded_build_rejects_a_missing_purelib(tmp_path):
    with pytest.raises(CorpusError, match=r"venv_purelib.*nowhere"):
        build_embedded_corpus(tmp_path / "c.jsonl", tmp_path / "m.tsv", max_files_per_domain=5,
                              venv_purelib=tmp_path / "nowhere")


# --- embedded corpus: a real (capped) build from this venv and the stdlib -----------------------

CAP = 20


def count_words(text: str) -> int:
    return len(text.split())


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    out = tmp_path_factory.mktemp("embedded")
    summary = build_embedded_corpus(
        out / "corpus.jsonl", out / "manifest.tsv", max_files_per_domain=CAP, count_tokens=count_words
    )
    records = [json.loads(line) for line in (out / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    with open(out / "manifest.tsv", newline="", encoding="utf-8") as f:
        manifest = list(csv.DictReader(f, delimiter="\t"))
    return out, summary, records, manifest


def test_embedded_has_all_eight_domains(embedded):
    _, summary, records, _ = embedded
    assert list(summary) == list(EMBEDDED_DOMAINS)
    assert all(0 < n <= CAP for n in summary.values()), summary
    assert {r["meta"]["pile_set_name"] for r in records} == set(EMBEDDED_DOMAINS)
    assert sum(summary.values()) == len(records)
    headers = [r["meta"]["doc_id"] for r in records if r["meta"]["pile_set_name"] == "c_cpp_headers"]
    assert 10 * sum("/ATen/ops/" in h for h in headers) <= len(headers)


def test_embedded_documents_are_long_enough_and_ids_say_where_they_come_from(embedded):
    _, _, records, _ = embedded
    for r in records:
        meta = r["meta"]
        assert len(r["text"]) >= 200
        assert meta["doc_id"].startswith(meta["pile_set_name"] + "/")
        assert meta["doc_id"].split("/", 2)[1] in ("site-packages", "stdlib")
    topics = [r["meta"]["doc_id"] for r in records if r["meta"]["pile_set_name"] == "language_reference"]
    assert all(t.startswith("language_reference/stdlib/pydoc_data/topics.py#") for t in topics)


def test_embedded_build_is_deterministic_and_leaves_no_temp_files(embedded, tmp_path):
    out, _, _, _ = embedded
    # Another process with another hash seed: walk order, set order and hash() must not matter.
    script = (
        "import sys; from pathlib import Path; from pndecomp.corpus import build_embedded_corpus; "
        "out = Path(sys.argv[1]); build_embedded_corpus(out / 'corpus.jsonl', out / 'manifest.tsv', "
        f"max_files_per_domain={CAP}, count_tokens=lambda text: len(text.split()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env)
    for name in ("corpus.jsonl", "manifest.tsv"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "manifest.tsv"]


def test_embedded_has_no_exact_duplicates(embedded):
    _, _, records, _ = embedded
    normalised = [" ".join(r["text"].split()) for r in records]
    assert len(set(normalised)) == len(normalised)


def test_embedded_python_file_feeds_at_most_one_domain(embedded):
    _, _, records, _ = embedded
    py_domains = {"python_code", "python_tests", "docstrings", "code_comments"}
    paths = [
        r["meta"]["doc_id"].split("/", 1)[1] for r in records if r["meta"]["pile_set_name"] in py_domains
    ]
    assert len(paths) == len(set(paths))
    assert len(paths) == 4 * CAP


def test_embedded_tests_and_code_are_told_apart(embedded):
    _, _, records, _ = embedded
    for r in records:
        domain, rel = r["meta"]["pile_set_name"], r["meta"]["doc_id"].split("/", 1)[1]
        if domain in ("python_code", "python_tests"):
            assert corpus_module._is_test_path(rel) == (domain == "python_tests"), rel


def test_embedded_manifest_columns_and_values(embedded):
    out, _, records, manifest = embedded
    header = (out / "manifest.tsv").read_text(encoding="utf-8").splitlines()[0]
    assert tuple(header.split("\t")) == MANIFEST_COLUMNS
    assert len(manifest) == len(records)
    for row, record in zip(manifest, records):
        text = record["text"]
        assert f"{row['domain']}/{row['relative_path']}" == record["meta"]["doc_id"]
        assert row["sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
        assert int(row["n_chars"]) == len(text)
        assert int(row["n_tokens"]) == count_words(text)
        assert "==" in row["package"] and "unknown" not in row["package"]


def test_embedded_corpus_reads_back_through_iter_documents(embedded):
    out, summary, records, _ = embedded
    config = corpus_config([out / "corpus.jsonl"], id_field="meta.doc_id", group_field="meta.group")
    docs = read(config)
    assert [d.doc_id for d in docs] == [r["meta"]["doc_id"] for r in records]
    assert {label: sum(d.label == label for d in docs) for label in EMBEDDED_DOMAINS} == summary
    assert all(d.group for d in docs)
