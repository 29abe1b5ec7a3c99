"""The offline "embedded" corpus (docs/method.md §6): labelled text from the venv's purelib and the stdlib.

:func:`build_embedded_corpus` writes a labelled corpus in the Pile format from text the project's
own virtual environment and the Python standard library put on disk, for machines with no hub.
Its eight domains (the labels) are :data:`EMBEDDED_DOMAINS`. Read it back with
:func:`pndecomp.corpus.iter_documents`.
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
import tokenize
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from pndecomp.corpus import CorpusError
from pndecomp.dedup import near_duplicate_groups
from pndecomp.splits import unit_hash
from pndecomp.storage import atomic_path

log = logging.getLogger(__name__)

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
# No token counts: the corpus does not depend on the model, so every model of a study reads the same one.
MANIFEST_COLUMNS = ("domain", "package", "relative_path", "sha256", "n_chars")

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
    for doc, group in zip(docs, near_duplicate_groups([d.doc_id for d in docs], [d.text for d in docs]), strict=True):
        doc.group = group
    # A hash order interleaves the domains, so reading only the first N documents stays balanced.
    docs.sort(key=lambda d: (unit_hash("embedded-order", d.doc_id), d.doc_id))

    _write_jsonl(out_jsonl, docs)
    _write_manifest(out_manifest, docs)
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


# --- writing ------------------------------------------------------------------------------------


def _write_jsonl(path: Path, docs: list[_EmbeddedDoc]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as out:
        for doc in docs:
            meta = {"pile_set_name": doc.domain, "doc_id": doc.doc_id, "group": doc.group}
            out.write(json.dumps({"text": doc.text, "meta": meta}, ensure_ascii=False) + "\n")


def _write_manifest(path: Path, docs: list[_EmbeddedDoc]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for doc in docs:
            writer.writerow([
                doc.domain,
                doc.package,
                doc.rel,
                hashlib.sha256(doc.text.encode("utf-8")).hexdigest(),
                len(doc.text),
            ])
