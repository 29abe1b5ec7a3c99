"""Documents for the pipeline (SPEC §2, §6): readers and the offline "embedded" corpus.

Two halves:

* :func:`iter_documents` streams :class:`Document` objects from the configured source: Pile-format
  files (``.jsonl``, ``.jsonl.zst``, ``.parquet``; ``{"text": ..., "meta": {"pile_set_name": ...}}``)
  or a Hugging Face dataset. Every bad input raises :class:`CorpusError`, whose message names the
  file and line (or the config key), the bad value and what would be valid.
* :func:`build_embedded_corpus` writes a labelled corpus in the Pile format from text the project's
  own virtual environment and the Python standard library put on disk, for machines with no hub.
  Its eight domains (the labels) are :data:`EMBEDDED_DOMAINS`.
"""
from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import logging
import os
import platform
import re
import sysconfig
import tempfile
import tokenize
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import zstandard

from pndecomp.splits import unit_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    label: str | None  # e.g. the Pile's meta.pile_set_name, or the embedded domain
    group: str  # split key: near-duplicates share it; defaults to doc_id


class CorpusError(ValueError):
    """Bad corpus input: names the file (and line) or config key, the bad value and what is valid."""


# ---------------------------------------------------------------------------------------------
# Reading: records from files or a Hugging Face dataset, then Documents from records
# ---------------------------------------------------------------------------------------------

FILE_EXTENSIONS = (".jsonl", ".jsonl.zst", ".parquet")
SOURCES = ("files", "hf")
BAD_RECORD_POLICIES = ("error", "skip")

_ZSTD_READ_BYTES = 1 << 20
_PARQUET_BATCH_ROWS = 1024
_MISSING = object()


@dataclass(frozen=True)
class _RawRecord:
    where: str  # for messages: "data/a.jsonl, line 3"
    default_id: str  # "<file basename>:<1-based line or row>"
    record: object  # the parsed record; None when the line is not valid JSON
    parse_error: str | None = None


@dataclass(frozen=True)
class _Fields:
    """Where a record keeps each part of a Document (dotted paths; None = not configured)."""

    config_key: str  # "corpus.files" or "corpus.hf", for messages
    text: str
    label: str | None
    id: str | None
    group: str | None

    @classmethod
    def from_config(cls, config_key: str, section: dict) -> _Fields:
        return cls(
            config_key,
            section.get("text_field", "text"),
            section.get("label_field"),
            section.get("id_field"),
            section.get("group_field"),
        )


class _SkippableRecord(Exception):
    """A record-level problem that ``on_bad_record: skip`` skips; ``kind`` names it in the counts."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def iter_documents(corpus: dict) -> Iterator[Document]:
    """The documents of the configured corpus, in source order.

    ``corpus`` is the validated ``corpus`` config section. Config and file-level problems (unknown
    source, missing file, unknown extension) raise here, before any document is read; record-level
    problems raise (or are skipped and counted) as iteration reaches them.
    """
    source = corpus.get("source")
    policy = corpus.get("on_bad_record", "error")
    if policy not in BAD_RECORD_POLICIES:
        raise CorpusError(f"corpus.on_bad_record is {policy!r}; valid: {list(BAD_RECORD_POLICIES)}")
    max_documents = corpus.get("max_documents")
    if max_documents is not None and max_documents <= 0:
        raise CorpusError(f"corpus.max_documents is {max_documents!r}; valid: a positive integer or null")
    if source == "files":
        section = corpus["files"]
        fields = _Fields.from_config("corpus.files", section)
        paths = _checked_paths(section.get("paths") or [], ids_from_names=fields.id is None)
        records = _file_records(paths, fields)
        described = f"files {[str(p) for p in paths]}"
    elif source == "hf":
        section = corpus["hf"]
        fields = _Fields.from_config("corpus.hf", section)
        records = _hf_records(section)
        described = f"Hugging Face dataset {section['name']!r} (split {section.get('split')!r})"
    else:
        raise CorpusError(
            f"corpus.source is {source!r}; valid: {list(SOURCES)} "
            "(the embedded corpus is built into a .jsonl file and read with source: files)"
        )
    return _documents(records, fields, policy, max_documents, described)


def _documents(
    records: Iterable[_RawRecord],
    fields: _Fields,
    policy: str,
    max_documents: int | None,
    described: str,
) -> Iterator[Document]:
    n_documents = 0
    skipped: Counter[str] = Counter()
    for raw in records:
        try:
            document = _to_document(raw, fields)
        except _SkippableRecord as problem:
            if policy == "skip":
                skipped[problem.kind] += 1
                continue
            raise CorpusError(
                f"{raw.where}: {problem}; fix the record or set corpus.on_bad_record: skip"
            ) from None
        n_documents += 1
        yield document
        if n_documents == max_documents:
            break
    _log_counts(described, n_documents, skipped)
    if n_documents == 0:
        detail = f" (skipped: {dict(skipped)})" if skipped else ""
        raise CorpusError(f"corpus {described} has no documents{detail}; it needs at least one")


def _log_counts(described: str, n_documents: int, skipped: Counter[str]) -> None:
    if skipped:
        log.warning(
            "corpus %s: read %d documents, skipped %d bad records: %s",
            described, n_documents, sum(skipped.values()), dict(sorted(skipped.items())),
        )
    else:
        log.info("corpus %s: read %d documents", described, n_documents)


def _to_document(raw: _RawRecord, fields: _Fields) -> Document:
    if raw.parse_error is not None:
        raise _SkippableRecord("malformed_json", raw.parse_error)
    text = _lookup(raw.record, fields.text)
    if text is _MISSING:
        raise _SkippableRecord(
            "missing_text", f"record has no text field {fields.text!r} ({fields.config_key}.text_field)"
        )
    if not isinstance(text, str):
        raise _SkippableRecord(
            "non_string_text",
            f"text field {fields.text!r} holds a {type(text).__name__}, not a string",
        )
    label = _required_value(raw, fields, "label", fields.label)
    doc_id = _required_value(raw, fields, "id", fields.id) or raw.default_id
    group = _required_value(raw, fields, "group", fields.group) or doc_id
    return Document(doc_id=doc_id, text=text, label=label, group=group)


def _required_value(raw: _RawRecord, fields: _Fields, what: str, path: str | None) -> str | None:
    """The string at ``path`` in the record; None when ``path`` is None (not configured)."""
    if path is None:
        return None
    value = _lookup(raw.record, path)
    if value is _MISSING or value is None:
        hint = " or set it to null for an unlabelled corpus" if what == "label" else ""
        raise CorpusError(
            f"{raw.where}: record has no {what} field {path!r} ({fields.config_key}.{what}_field); "
            f"point {what}_field at a field every record has{hint}"
        )
    if isinstance(value, (dict, list)):
        raise CorpusError(
            f"{raw.where}: {what} field {path!r} holds a {type(value).__name__}, not a single value; "
            f"point {fields.config_key}.{what}_field at a string field"
        )
    return str(value)


def _lookup(record: object, dotted_path: str) -> object:
    """``record["meta"]["pile_set_name"]`` for ``"meta.pile_set_name"``; _MISSING if absent.

    A key that itself contains the dots (a flattened column) is tried first.
    """
    if isinstance(record, dict) and dotted_path in record:
        return record[dotted_path]
    value = record
    for key in dotted_path.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _checked_paths(paths: list, ids_from_names: bool) -> list[Path]:
    if not paths:
        raise CorpusError(f"corpus.files.paths is empty; list files ending in {list(FILE_EXTENSIONS)}")
    checked = []
    for path in map(Path, paths):
        if not path.name.endswith(FILE_EXTENSIONS):
            raise CorpusError(
                f"corpus.files.paths: {str(path)!r} has an unknown extension; valid: {list(FILE_EXTENSIONS)}"
            )
        if not path.is_file():
            raise CorpusError(
                f"corpus.files.paths: {str(path)!r} does not exist (working directory {os.getcwd()})"
            )
        checked.append(path)
    if ids_from_names:
        # Default ids are "<basename>:<line>", so two files of one name would share ids (and splits).
        repeated = sorted(name for name, n in Counter(p.name for p in checked).items() if n > 1)
        if repeated:
            raise CorpusError(
                f"corpus.files.paths: file name(s) {repeated} occur more than once, so the default "
                "document ids '<file basename>:<line>' would collide; rename the files or set "
                "corpus.files.id_field"
            )
    return checked


def _file_records(paths: list[Path], fields: _Fields) -> Iterator[_RawRecord]:
    for path in paths:
        if path.name.endswith(".parquet"):
            yield from _parquet_records(path, fields)
        else:
            yield from _jsonl_records(path)


def _jsonl_records(path: Path) -> Iterator[_RawRecord]:
    line_number = 0
    try:
        with _open_text(path) as lines:
            for line_number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue  # blank lines (a trailing newline, say) are not records
                where = f"corpus file {path}, line {line_number}"
                default_id = f"{path.name}:{line_number}"
                try:
                    yield _RawRecord(where, default_id, json.loads(line))
                except json.JSONDecodeError as exc:
                    yield _RawRecord(where, default_id, None, f"malformed JSON ({exc})")
    except (zstandard.ZstdError, UnicodeDecodeError, OSError) as exc:
        raise CorpusError(
            f"corpus file {path}: unreadable after line {line_number} ({exc}); "
            "it must be UTF-8 JSON lines, zstd-compressed if it ends in .zst"
        ) from exc


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".zst"):
        raw = open(path, "rb")
        return io.TextIOWrapper(io.BufferedReader(_ZstdReader(raw)), encoding="utf-8")
    return open(path, encoding="utf-8")


class _ZstdReader(io.RawIOBase):
    """The decompressed bytes of a (possibly multi-frame) zstd file, streamed.

    Not ``ZstdDecompressor().stream_reader``: that silently ends at a truncated frame, so a
    half-downloaded file would read as a shorter corpus. Here a frame cut short raises ZstdError.
    """

    def __init__(self, compressed: io.BufferedIOBase):
        self._compressed = compressed
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame = None  # decompressobj of the frame in progress, None between frames
        self._unused = b""  # compressed bytes after the end of the last frame
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            chunk = self._unused or self._compressed.read(_ZSTD_READ_BYTES)
            self._unused = b""
            if not chunk:
                if self._frame is not None:
                    raise zstandard.ZstdError("truncated file: the last zstd frame is incomplete")
                return 0
            if self._frame is None:
                self._frame = self._decompressor.decompressobj()
            self._out = memoryview(self._frame.decompress(chunk))
            if self._frame.eof:
                self._unused, self._frame = self._frame.unused_data, None
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        self._compressed.close()
        super().close()


def _parquet_records(path: Path, fields: _Fields) -> Iterator[_RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        parquet = pq.ParquetFile(path)
        # Read only the columns the fields live in (a dotted path lives in its first part's struct).
        wanted = [f for f in (fields.text, fields.label, fields.id, fields.group) if f]
        wanted += [f.split(".")[0] for f in wanted]
        columns = [c for c in parquet.schema_arrow.names if c in wanted]
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
            for record in batch.to_pylist():
                row += 1
                yield _RawRecord(f"corpus file {path}, row {row}", f"{path.name}:{row}", record)
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(
            f"corpus file {path}: unreadable after row {row} ({exc}); it must be a Parquet file"
        ) from exc


def _hf_records(section: dict) -> Iterator[_RawRecord]:
    import datasets  # heavy, and only needed with a hub

    name, config, split = section["name"], section.get("config"), section.get("split")
    try:
        dataset = datasets.load_dataset(
            name,
            config,
            split=split,
            revision=section.get("revision"),
            streaming=section.get("streaming", True),
        )
    except Exception as exc:  # hub, network, auth and format errors come in many types
        raise CorpusError(
            f"corpus.hf: cannot load dataset {name!r} (config {config!r}, split {split!r}, "
            f"revision {section.get('revision')!r}): {exc}"
        ) from exc
    prefix = f"{name}/{config}" if config else name
    where = f"corpus.hf dataset {prefix!r}, split {split!r}, row"
    return (
        _RawRecord(f"{where} {row}", f"{prefix}:{split}:{row}", record)
        for row, record in enumerate(dataset, start=1)
    )


# ---------------------------------------------------------------------------------------------
# The embedded corpus: labelled text from the venv's purelib and the standard library
# ---------------------------------------------------------------------------------------------

EMBEDDED_DOMAINS = (
    "python_code",
    "python_tests",
    "c_cpp_headers",
    "docstrings",
    "code_comments",
    "package_readmes",
    "license_texts",
    "language_reference",
)
# A .py file feeds exactly one of these (chosen by a hash of its path); "python_source" stands for
# python_code or python_tests, whichever the path says.
_PY_DOMAIN_CHOICES = ("python_source", "docstrings", "code_comments")
MANIFEST_COLUMNS = ("domain", "package", "relative_path", "sha256", "n_chars", "n_tokens")

MIN_DOC_CHARS = 200
MAX_FILE_BYTES = 1_000_000  # bounds the build; files this large are mostly generated
ATEN_OPS_MAX_PERCENT = 10  # of c_cpp_headers: torch's generated ATen/ops headers are near-identical
_HEADER_SUFFIXES = (".h", ".hpp", ".cuh")
_LICENSE_NAME = re.compile(r"(licen[cs]e|copying)", re.IGNORECASE)
_NOT_LICENSE_SUFFIXES = {".py", ".pyc", ".pyi", ".so", ".json", ".html", ".js", ".css", ".h", ".c", ".cpp"}
# The stdlib's site-packages holds the base interpreter's packages, which are not the project's.
_SKIPPED_DIRS = {"__pycache__", "site-packages", "dist-packages"}
_TOOL_DIRECTIVE = re.compile(r"^(noqa|type:|pragma|pylint:|fmt:|isort:|mypy:|ruff:|nosec|-\*-)")


@dataclass(frozen=True)
class _SourceFile:
    path: Path  # on disk
    rel: str  # "site-packages/<path>" or "stdlib/<path>", POSIX separators
    package: str  # "name==version" of the owning distribution, or "stdlib==3.11.7"


@dataclass(frozen=True)
class _Candidate:
    domain: str
    source: _SourceFile
    topic: str | None = None  # language_reference: one document per pydoc topic
    topic_text: str | None = None

    @property
    def rel(self) -> str:
        return f"{self.source.rel}#{self.topic}" if self.topic else self.source.rel


@dataclass
class _EmbeddedDoc:
    domain: str
    rel: str
    package: str
    text: str
    group: str = ""

    @property
    def doc_id(self) -> str:
        return f"{self.domain}/{self.rel}"


def build_embedded_corpus(
    out_jsonl: Path,
    out_manifest: Path,
    *,
    max_files_per_domain: int,
    count_tokens: Callable[[str], int] | None = None,
    venv_purelib: Path | None = None,
) -> dict:
    """Write the embedded corpus (Pile-format JSON lines) and its manifest (TSV); return {domain: n_docs}.

    Read it back with ``source: files, paths: [out_jsonl], id_field: meta.doc_id,
    group_field: meta.group`` (label_field stays ``meta.pile_set_name``). The same environment and
    ``max_files_per_domain`` give byte-identical outputs.
    """
    if max_files_per_domain < 1:
        raise CorpusError(f"max_files_per_domain is {max_files_per_domain!r}; valid: a positive integer")
    purelib = Path(venv_purelib) if venv_purelib is not None else Path(sysconfig.get_paths()["purelib"])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if not purelib.is_dir():
        raise CorpusError(f"venv_purelib {str(purelib)!r} is not a directory; pass the venv's site-packages")

    sources = _source_files(purelib, stdlib)
    candidates = _candidates_by_domain(sources)
    seen_texts: set[str] = set()  # exact duplicates are dropped across all domains
    docs = [
        doc
        for domain in EMBEDDED_DOMAINS
        for doc in _select(domain, candidates[domain], max_files_per_domain, seen_texts)
    ]
    for doc, group in zip(docs, _near_duplicate_groups([d.doc_id for d in docs], [d.text for d in docs])):
        doc.group = group
    # A hash order interleaves the domains, so reading only the first N documents stays balanced.
    docs.sort(key=lambda d: (unit_hash("embedded-order", d.doc_id), d.doc_id))

    _write_jsonl(out_jsonl, docs)
    _write_manifest(out_manifest, docs, count_tokens)
    summary = {domain: sum(d.domain == domain for d in docs) for domain in EMBEDDED_DOMAINS}
    for domain in (d for d, n in summary.items() if n == 0):
        log.warning("embedded corpus: domain %s has no documents in this environment", domain)
    log.info("embedded corpus: %d documents in %s: %s", len(docs), out_jsonl, summary)
    return summary


# --- finding files ----------------------------------------------------------------------------


def _source_files(purelib: Path, stdlib: Path) -> list[_SourceFile]:
    owners = _purelib_owners(purelib)
    stdlib_package = f"stdlib=={platform.python_version()}"
    files = []
    for root_name, root in (("site-packages", purelib), ("stdlib", stdlib)):
        for path in _walk(root):
            rel = path.relative_to(root).as_posix()
            if root_name == "stdlib":
                package = stdlib_package
            else:
                package = owners.get(rel) or owners.get(rel.split("/")[0] + "/", "unknown")
            files.append(_SourceFile(path, f"{root_name}/{rel}", package))
    return files


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):  # symlinked dirs are not followed
        dirnames[:] = [d for d in dirnames if d not in _SKIPPED_DIRS and not d.startswith(".")]
        for name in filenames:
            yield Path(dirpath, name)


def _purelib_owners(purelib: Path) -> dict[str, str]:
    """Relative path -> "name==version" from each dist-info's RECORD.

    Keys ending in "/" map a top-level directory to its distribution, for files no RECORD lists.
    """
    owners: dict[str, str] = {}
    for dist_info in sorted(purelib.glob("*.dist-info")):
        distribution = metadata.PathDistribution(dist_info)
        name = distribution.metadata["Name"] or dist_info.name.split("-")[0]
        package = f"{name}=={distribution.version}"
        for file in distribution.files or []:
            rel = file.as_posix()
            owners.setdefault(rel, package)
            if "/" in rel and not rel.startswith(".."):
                owners.setdefault(rel.split("/")[0] + "/", package)
    return owners


# --- which domain each file may feed ------------------------------------------------------------


def _candidates_by_domain(sources: list[_SourceFile]) -> dict[str, list[_Candidate]]:
    candidates: dict[str, list[_Candidate]] = {domain: [] for domain in EMBEDDED_DOMAINS}
    for source in sources:
        name = source.path.name
        if source.rel == "stdlib/pydoc_data/topics.py":
            candidates["language_reference"].extend(_topic_candidates(source))
        elif name.endswith(".py"):
            domain = _py_domain(source.rel)
            candidates[domain].append(_Candidate(domain, source))
        elif name.endswith(_HEADER_SUFFIXES):
            candidates["c_cpp_headers"].append(_Candidate("c_cpp_headers", source))
        elif name == "METADATA" and source.path.parent.name.endswith(".dist-info"):
            candidates["package_readmes"].append(_Candidate("package_readmes", source))
        elif _LICENSE_NAME.search(name) and source.path.suffix.lower() not in _NOT_LICENSE_SUFFIXES:
            candidates["license_texts"].append(_Candidate("license_texts", source))
    return candidates


def _py_domain(rel: str) -> str:
    """The one domain a .py file feeds: a hash of its path picks among code, docstrings, comments.

    Deciding by path alone keeps the choice independent of max_files_per_domain, so a small
    build is a subset of a larger one.
    """
    choice = max(_PY_DOMAIN_CHOICES, key=lambda d: unit_hash("py-domain", d, rel))
    if choice == "python_source":
        return "python_tests" if _is_test_path(rel) else "python_code"
    return choice


def _is_test_path(rel: str) -> bool:
    *dirs, name = rel.split("/")
    return (
        any(d in ("test", "tests") for d in dirs)
        or name.startswith("test_")
        or name.endswith("_test.py")
        or name == "conftest.py"
    )


def _topic_candidates(source: _SourceFile) -> list[_Candidate]:
    """One candidate per entry of the ``topics`` dict in pydoc_data/topics.py (read, not imported)."""
    module = ast.parse(source.path.read_text(encoding="utf-8"))
    for node in module.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "topics" for t in node.targets):
            topics = ast.literal_eval(node.value)
            return [_Candidate("language_reference", source, topic, text) for topic, text in topics.items()]
    return []


# --- selecting and extracting text --------------------------------------------------------------


def _select(
    domain: str, candidates: list[_Candidate], max_docs: int, seen_texts: set[str]
) -> list[_EmbeddedDoc]:
    """Up to ``max_docs`` documents of one domain, without exact duplicates.

    torch's generated ATen/ops headers are near-identical, so they make at most
    ATEN_OPS_MAX_PERCENT of the domain: the other files are taken first, then ATen/ops files
    up to that share of the final count.
    """
    aten_ops = [c for c in candidates if "/ATen/ops/" in c.rel]
    others = [c for c in candidates if "/ATen/ops/" not in c.rel]
    reserved = max_docs * ATEN_OPS_MAX_PERCENT // 100 if aten_ops else 0
    selected = _take(domain, others, max_docs - reserved, seen_texts)
    # n_aten <= percent * (n_others + n_aten) / 100  <=>  n_aten <= n_others * percent / (100 - percent)
    n_aten_ops = min(reserved, len(selected) * ATEN_OPS_MAX_PERCENT // (100 - ATEN_OPS_MAX_PERCENT))
    return selected + _take(domain, aten_ops, n_aten_ops, seen_texts)


def _take(domain: str, candidates: list[_Candidate], n: int, seen_texts: set[str]) -> list[_EmbeddedDoc]:
    """The first ``n`` usable candidates in sha1(domain, path) order (never walk order or hash())."""
    extract = _EXTRACTORS[domain]
    taken: list[_EmbeddedDoc] = []
    for candidate in sorted(candidates, key=lambda c: (unit_hash(domain, c.rel), c.rel)):
        if len(taken) >= n:
            break
        text = extract(candidate)
        if text is None or len(text) < MIN_DOC_CHARS or not _is_utf8_encodable(text):
            continue
        key = hashlib.sha1(" ".join(text.split()).encode("utf-8")).hexdigest()  # exact duplicates
        if key in seen_texts:
            continue
        seen_texts.add(key)
        taken.append(_EmbeddedDoc(domain, candidate.rel, candidate.source.package, text))
    return taken


def _read_text(path: Path) -> str | None:
    """The file's text (universal newlines, stripped), or None for big, unreadable or non-UTF-8 files."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _file_text(candidate: _Candidate) -> str | None:
    return _read_text(candidate.source.path)


def _module_docstring(candidate: _Candidate) -> str | None:
    source = _read_text(candidate.source.path)
    head = _up_to_leading_string(source) if source else None
    if head is None:
        return None
    try:
        docstring = ast.get_docstring(ast.parse(head))
    except (SyntaxError, ValueError):
        return None
    return docstring if docstring and _is_prose(docstring) else None


def _up_to_leading_string(source: str) -> str | None:
    """The source up to the end of its first token if that token is a string, else None.

    Only this head is parsed for the docstring: parsing whole modules made up most of the build time.
    """
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE):
                continue
            if token.type != tokenize.STRING:
                return None
            end_row, end_col = token.end
            lines = io.StringIO(source).readlines()[:end_row]
            return "".join(lines[:-1]) + lines[-1][:end_col]
    except (tokenize.TokenError, SyntaxError):
        return None
    return None


def _is_prose(text: str) -> bool:
    """English-like prose: mostly ASCII letters and spaces (reST, code and tables score lower)."""
    letters_or_spaces = sum(c.isspace() or ("a" <= c.lower() <= "z") for c in text)
    return letters_or_spaces >= 0.85 * len(text)


def _comments(candidate: _Candidate) -> str | None:
    """The file's ``#`` comments, one a line, without the ``#`` and tool directives (noqa, type:, ...)."""
    source = _read_text(candidate.source.path)
    if not source:
        return None
    lines = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type != tokenize.COMMENT or token.string.startswith("#!"):
                continue
            comment = token.string.lstrip("#").strip()
            if comment and not _TOOL_DIRECTIVE.match(comment):
                lines.append(comment)
    except (tokenize.TokenError, SyntaxError):
        return None  # not tokenizable Python (a test fixture, say)
    return "\n".join(lines)


def _metadata_description(candidate: _Candidate) -> str | None:
    """The body of a dist-info METADATA file: the package description after the headers."""
    text = _read_text(candidate.source.path)
    if text is None or "\n\n" not in text:
        return None
    return text.split("\n\n", 1)[1].strip()


def _topic_text(candidate: _Candidate) -> str | None:
    return candidate.topic_text.strip() if candidate.topic_text else None


def _is_utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")  # a docstring may hold lone surrogates from escapes
    except UnicodeEncodeError:
        return False
    return True


_EXTRACTORS: dict[str, Callable[[_Candidate], str | None]] = {
    "python_code": _file_text,
    "python_tests": _file_text,
    "c_cpp_headers": _file_text,
    "docstrings": _module_docstring,
    "code_comments": _comments,
    "package_readmes": _metadata_description,
    "license_texts": _file_text,
    "language_reference": _topic_text,
}


# --- near-duplicate groups ----------------------------------------------------------------------
# Licences and copied headers repeat with small edits (another copyright line), and a split by
# document would put the copies on both sides. A prefix hash is not enough: many code files start
# with the same licence header yet differ after it. So each text gets a MinHash signature over its
# word 5-gram shingles; documents sharing a band of it (LSH) are compared, and a document whose
# estimated Jaccard similarity to a group's first member (its "leader") is >= 0.7 joins that group.
# Comparing with the leader, not with any member, keeps groups from chaining into one blob (a file
# holding two licences would otherwise join every MIT and every BSD licence into one group).
# Documents are visited in doc id order, so a group is named by its smallest doc id, and a document
# with no near-duplicate keeps group == doc_id.

_SHINGLE_WORDS = 5
_MINHASH_BANDS, _MINHASH_ROWS = 16, 4
NEAR_DUPLICATE_JACCARD = 0.7
_UINT64 = np.uint64


def _hash_constants(label: str, n: int) -> np.ndarray:
    digests = (hashlib.sha1(f"{label}-{i}".encode()).digest() for i in range(n))
    return np.array([int.from_bytes(d[:8], "big") | 1 for d in digests], dtype=_UINT64)


_SHINGLE_MULTIPLIERS = _hash_constants("shingle", _SHINGLE_WORDS)
_MINHASH_A = _hash_constants("minhash-a", _MINHASH_BANDS * _MINHASH_ROWS)
_MINHASH_B = _hash_constants("minhash-b", _MINHASH_BANDS * _MINHASH_ROWS)


def _minhash_signature(text: str) -> np.ndarray:
    """[bands * rows] uint64: per hash function, the minimum over the text's word 5-grams."""
    words = re.findall(r"\w+", text.lower()) or [text]
    word_hashes = np.array([zlib.crc32(w.encode("utf-8")) for w in words], dtype=_UINT64)
    width = min(_SHINGLE_WORDS, len(words))
    n_shingles = len(words) - width + 1
    shingles = np.zeros(n_shingles, dtype=_UINT64)
    for i in range(width):  # uint64 arithmetic wraps around: a polynomial hash of the word hashes
        shingles += word_hashes[i : i + n_shingles] * _SHINGLE_MULTIPLIERS[i]
    shingles = np.unique(shingles)
    # Multiply-shift hashing: the high bits of a * x + b mod 2^64 are a universal hash of x.
    hashed = (shingles[None, :] * _MINHASH_A[:, None] + _MINHASH_B[:, None]) >> _UINT64(32)
    return hashed.min(axis=1)


def _near_duplicate_groups(doc_ids: list[str], texts: list[str]) -> list[str]:
    """The group of each document: the doc id of its group's leader (itself if it leads)."""
    groups: dict[int, str] = {}
    leaders_by_band: dict[tuple[int, bytes], list[int]] = {}
    signatures: dict[int, np.ndarray] = {}
    for i in sorted(range(len(doc_ids)), key=doc_ids.__getitem__):
        signature = _minhash_signature(texts[i])
        band_keys = [
            (band, signature[band * _MINHASH_ROWS : (band + 1) * _MINHASH_ROWS].tobytes())
            for band in range(_MINHASH_BANDS)
        ]
        candidates = {j for key in band_keys for j in leaders_by_band.get(key, [])}
        candidates = sorted(candidates, key=doc_ids.__getitem__)
        similarity = {j: float(np.mean(signatures[j] == signature)) for j in candidates}
        similar = [j for j in candidates if similarity[j] >= NEAR_DUPLICATE_JACCARD]
        if similar:
            groups[i] = groups[max(similar, key=similarity.__getitem__)]  # ties: the smallest id
            continue
        groups[i] = doc_ids[i]
        signatures[i] = signature
        for key in band_keys:
            leaders_by_band.setdefault(key, []).append(i)
    return [groups[i] for i in range(len(doc_ids))]


# --- writing ------------------------------------------------------------------------------------


@contextmanager
def _atomic_writer(path: Path) -> Iterator[io.TextIOBase]:
    """A text file that appears at ``path`` only when complete.

    It is written to a temporary name in the same directory, then moved with os.replace.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            yield out
        os.replace(tmp_name, path)
    except BaseException:
        os.unlink(tmp_name)
        raise


def _write_jsonl(path: Path, docs: list[_EmbeddedDoc]) -> None:
    with _atomic_writer(path) as out:
        for doc in docs:
            meta = {"pile_set_name": doc.domain, "doc_id": doc.doc_id, "group": doc.group}
            out.write(json.dumps({"text": doc.text, "meta": meta}, ensure_ascii=False) + "\n")


def _write_manifest(path: Path, docs: list[_EmbeddedDoc], count_tokens: Callable[[str], int] | None) -> None:
    with _atomic_writer(path) as out:
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for doc in docs:
            writer.writerow([
                doc.domain,
                doc.package,
                doc.rel,
                hashlib.sha256(doc.text.encode("utf-8")).hexdigest(),
                len(doc.text),
                count_tokens(doc.text) if count_tokens is not None else "",
            ])
