"""Tests for pndecomp.embedded_corpus: the offline corpus built from this venv and the stdlib."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_corpus import corpus_config, read
from test_dedup import MIT, UNRELATED

from pndecomp import embedded_corpus
from pndecomp.corpus import CorpusError
from pndecomp.embedded_corpus import (
    EMBEDDED_DOMAINS,
    MANIFEST_COLUMNS,
    build_embedded_corpus,
)

# --- extractors and a fake site-packages -------------------------------------------------------


def candidate_for(path: Path, domain: str):
    source = embedded_corpus._SourceFile(path, f"stdlib/{path.name}", "stdlib==3")
    return embedded_corpus._Candidate(domain, source)


def test_docstrings_keep_prose_and_comments_are_only_real_comments(tmp_path):
    prose = " ".join(["This module explains how the garden is watered in summer and in winter."] * 4)
    module = tmp_path / "garden.py"
    module.write_text(
        f'#!/usr/bin/env python\n# How to water.\n"""{prose}"""\n'
        'x = "# in a string"  # A real comment.\nimport os  # noqa: F401\n'
    )
    assert embedded_corpus._module_docstring(candidate_for(module, "docstrings")) == prose
    assert embedded_corpus._comments(candidate_for(module, "code_comments")) == "How to water.\nA real comment."

    table = tmp_path / "table.py"
    table.write_text('"""\n' + "| a | b |\n|---|---|\n| 1 | 2 |\n" * 20 + '"""\nx = 1\n')
    assert embedded_corpus._module_docstring(candidate_for(table, "docstrings")) is None  # not prose
    late = tmp_path / "late.py"
    late.write_text(f'x = 1\n"""{prose}"""\n')  # a string after code is no docstring
    assert embedded_corpus._module_docstring(candidate_for(late, "docstrings")) is None


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


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    out = tmp_path_factory.mktemp("embedded")
    summary = build_embedded_corpus(
        out / "corpus.jsonl", out / "manifest.tsv", max_files_per_domain=CAP
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
        "import sys; from pathlib import Path; from pndecomp.embedded_corpus import build_embedded_corpus; "
        "out = Path(sys.argv[1]); build_embedded_corpus(out / 'corpus.jsonl', out / 'manifest.tsv', "
        f"max_files_per_domain={CAP})"
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
            assert embedded_corpus._is_test_path(rel) == (domain == "python_tests"), rel


def test_embedded_manifest_columns_and_values(embedded):
    out, _, records, manifest = embedded
    header = (out / "manifest.tsv").read_text(encoding="utf-8").splitlines()[0]
    assert tuple(header.split("\t")) == MANIFEST_COLUMNS
    assert len(manifest) == len(records)
    for row, record in zip(manifest, records, strict=True):
        text = record["text"]
        assert f"{row['domain']}/{row['relative_path']}" == record["meta"]["doc_id"]
        assert row["sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
        assert int(row["n_chars"]) == len(text)
        assert "==" in row["package"] and "unknown" not in row["package"]


def test_embedded_corpus_reads_back_through_iter_documents(embedded):
    out, summary, records, _ = embedded
    config = corpus_config([out / "corpus.jsonl"], id_field="meta.doc_id", group_field="meta.group")
    docs = read(config)
    assert [d.doc_id for d in docs] == [r["meta"]["doc_id"] for r in records]
    assert {label: sum(d.label == label for d in docs) for label in EMBEDDED_DOMAINS} == summary
    assert all(d.group for d in docs)
