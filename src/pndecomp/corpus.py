"""Documents for the pipeline (docs/method.md §2, §6): the corpus readers.

:func:`iter_documents` streams :class:`Document` objects from the configured source: Pile-format
files (``.jsonl``, ``.jsonl.zst``, ``.parquet``; ``{"text": ..., "meta": {"pile_set_name": ...}}``)
or a Hugging Face dataset. Every bad input raises :class:`CorpusError`, whose message names the
file and line (or the config key), the bad value and what would be valid. Copies of a text share
a split group (``corpus.dedup``, :class:`pndecomp.dedup.DuplicateGroups`).

The offline "embedded" corpus is built by :mod:`pndecomp.embedded_corpus`; its near-duplicate
groups come from :mod:`pndecomp.dedup`.
"""
from __future__ import annotations

import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import zstandard

from .dedup import DEDUP_MODES, DuplicateGroups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    label: str | None  # e.g. the Pile's meta.pile_set_name, or the embedded domain
    group: str  # split key: duplicates share it (corpus.dedup); defaults to doc_id


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


class DocumentStream(Iterator[Document]):
    """The documents of a corpus, read as they are asked for; ``duplicates`` counts the duplicate
    groups among those read so far (all of them once the stream is exhausted)."""

    def __init__(self, documents: Iterator[Document], duplicate_groups: DuplicateGroups):
        self._documents = documents
        self._duplicate_groups = duplicate_groups

    def __next__(self) -> Document:
        return next(self._documents)

    @property
    def duplicates(self) -> dict:
        """{"mode": corpus.dedup, "groups": groups holding duplicates, "documents": documents in them}."""
        return self._duplicate_groups.counts()


def iter_documents(corpus: dict, *, require_files: bool = True) -> DocumentStream:
    """The documents of the configured corpus, in source order, each in its duplicate group.

    ``corpus`` is the validated ``corpus`` config section. Config and file-level problems (unknown
    source, missing file, unknown extension) raise here, before any document is read; record-level
    problems raise (or are skipped and counted) as iteration reaches them. ``require_files=False``
    skips the existence check (at DAG time, where Snakemake reports missing input files itself).
    """
    source = corpus.get("source")
    policy = corpus.get("on_bad_record", "error")
    if policy not in BAD_RECORD_POLICIES:
        raise CorpusError(f"corpus.on_bad_record is {policy!r}; valid: {list(BAD_RECORD_POLICIES)}")
    max_documents = corpus.get("max_documents")
    if max_documents is not None and max_documents <= 0:
        raise CorpusError(f"corpus.max_documents is {max_documents!r}; valid: a positive integer or null")
    dedup = corpus.get("dedup", "exact")
    if dedup not in DEDUP_MODES:
        raise CorpusError(f"corpus.dedup is {dedup!r}; valid: {list(DEDUP_MODES)}")
    duplicate_groups = DuplicateGroups(dedup)
    if source == "files":
        section = corpus["files"]
        fields = _Fields.from_config("corpus.files", section)
        paths = _checked_paths(section.get("paths") or [], ids_from_names=fields.id is None,
                               require_files=require_files)
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
    documents = _documents(records, fields, policy, max_documents, described, duplicate_groups)
    return DocumentStream(documents, duplicate_groups)


def _documents(
    records: Iterable[_RawRecord],
    fields: _Fields,
    policy: str,
    max_documents: int | None,
    described: str,
    duplicate_groups: DuplicateGroups,
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
        yield replace(document, group=duplicate_groups.group_of(document.group, document.text))
        if n_documents == max_documents:
            break
    _log_counts(described, n_documents, skipped, duplicate_groups.counts())
    if n_documents == 0:
        detail = f" (skipped: {dict(skipped)})" if skipped else ""
        raise CorpusError(f"corpus {described} has no documents{detail}; it needs at least one")


def _log_counts(described: str, n_documents: int, skipped: Counter[str], duplicates: dict) -> None:
    if skipped:
        log.warning(
            "corpus %s: read %d documents, skipped %d bad records: %s",
            described, n_documents, sum(skipped.values()), dict(sorted(skipped.items())),
        )
    else:
        log.info("corpus %s: read %d documents", described, n_documents)
    if duplicates["groups"]:
        log.info("corpus %s: %d groups of duplicates (corpus.dedup: %s) hold %d documents; a group stays in one split",
                 described, duplicates["groups"], duplicates["mode"], duplicates["documents"])


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


def _checked_paths(paths: list, ids_from_names: bool, require_files: bool = True) -> list[Path]:
    if not paths:
        raise CorpusError(f"corpus.files.paths is empty; list files ending in {list(FILE_EXTENSIONS)}")
    checked = []
    for path in map(Path, paths):
        if not path.name.endswith(FILE_EXTENSIONS):
            raise CorpusError(
                f"corpus.files.paths: {str(path)!r} has an unknown extension; valid: {list(FILE_EXTENSIONS)}"
            )
        if require_files and not path.is_file():
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
        if Path(name).is_dir():  # written by Dataset(Dict).save_to_disk: memory-mapped, never streamed
            dataset = datasets.load_from_disk(name)
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise CorpusError(f"corpus.hf.split is {split!r}; the dataset at {name} has {list(dataset)}")
                dataset = dataset[split]
        else:
            dataset = datasets.load_dataset(name, config, split=split, revision=section.get("revision"),
                                            streaming=section.get("streaming", True))
    except CorpusError:
        raise
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
