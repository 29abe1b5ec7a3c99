"""Fingerprints of the package source a workflow script runs, so that Snakemake reruns a rule's jobs when it
changes.

Snakemake tracks a rule's own script (``workflow/scripts/*.py``), not the ``pndecomp`` modules it calls; each
rule passes :func:`script_fingerprint` of its script as a param instead (``code_version`` in
``workflow/rules/common.smk``), and a changed param reruns the job. The modules are found by reading the
source (:mod:`ast`), never by importing them: building the DAG imports no torch, and only the stdlib here.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import re
import textwrap
from pathlib import Path

PACKAGE = "pndecomp"


def module_file(module: str, package_dir: Path) -> Path | None:
    """The source file of ``module`` (dotted, starting with the package's name) under ``package_dir``, or
    None when it names no module there (an attribute such as ``from pndecomp.figures import FIGURES``)."""
    parts = module.split(".")[1:]
    base = package_dir.joinpath(*parts)
    for candidate in (base.with_suffix(".py") if parts else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


# A line that starts an import statement (with a parenthesised continuation); text in a docstring may match too,
# and is dropped by the parse below unless it is valid import syntax (then it only widens the closure).
_IMPORT_LINE = re.compile(r"^[ \t]*(?:from[ \t]+\.*[\w.]*[ \t]+import[ \t]+(?:\([^)]*\)|[^\n]*)|import[ \t]+[^\n]*)",
                          re.MULTILINE)


def import_statements(source: str) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``source``, at any depth (function-level imports too), parsed one by one:
    parsing the import lines alone takes a fraction of parsing the module, which Snakemake would pay for
    every module at every start."""
    statements = []
    for match in _IMPORT_LINE.finditer(source):
        try:
            tree = ast.parse(textwrap.dedent(match.group(0)).strip())
        except SyntaxError:
            continue  # prose in a docstring
        statements += [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    return statements


def imported_modules(path: Path, package: str, module: str | None = None) -> set[str]:
    """The modules of ``package`` that the file at ``path`` imports anywhere in its body (function-level
    imports too), as dotted names; ``module`` is the file's own dotted name, for relative imports.

    ``from package.a import b`` yields ``package.a`` and ``package.a.b`` (the latter counts only if it is a
    module; :func:`module_closure` checks).
    """
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in import_statements(path.read_text()):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if module is None:
                    continue  # a script's relative import cannot reach the package
                # the package a relative import starts from: the module's own for __init__, else its parent's
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name == package or name.startswith(f"{package}.")}


def module_closure(script: Path, package_dir: Path, package: str = PACKAGE,
                   known: dict[str, set[str]] | None = None) -> dict[str, Path]:
    """Every module of the package (found at ``package_dir``) that running ``script`` imports, directly or
    through other modules, with its parent packages (importing a module runs their ``__init__``):
    {dotted name: source file}.

    ``known`` ({module: what it imports}, filled here) lets calls for several scripts parse each module once.
    """
    known = {} if known is None else known
    closure: dict[str, Path] = {}
    pending = sorted(imported_modules(script, package))
    while pending:
        name = pending.pop()
        if name in closure:
            continue
        path = module_file(name, package_dir)
        if path is None:
            continue
        closure[name] = path
        parents = [".".join(name.split(".")[:depth]) for depth in range(1, name.count(".") + 1)]
        if name not in known:
            known[name] = imported_modules(path, package, name)
        pending.extend([*parents, *sorted(known[name])])
    return closure


def fingerprint(script: Path, package_dir: Path, package: str = PACKAGE,
                known: dict[str, set[str]] | None = None) -> str:
    """A short hash of the names and source of the package modules ``script`` runs (:func:`module_closure`,
    with ``known``): it changes when any of them does, and only then."""
    digest = hashlib.sha256()
    for name, path in sorted(module_closure(script, package_dir, package, known).items()):
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def package_dir(package: str = PACKAGE) -> Path:
    """Where ``package`` is imported from by this interpreter (the one Snakemake runs in; its jobs import
    the same one), found without running the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not importable from this Python")
    return Path(next(iter(spec.submodule_search_locations)))


# What each module of the installed pndecomp imports, parsed once per process for all scripts.
_INSTALLED_IMPORTS: dict[str, set[str]] = {}


@functools.cache
def script_fingerprint(script: str | Path) -> str:
    """:func:`fingerprint` of a workflow script for the installed ``pndecomp``, computed once per process
    (every rule, and in a model study every model's copy of it, asks)."""
    return fingerprint(Path(script), package_dir(), known=_INSTALLED_IMPORTS)
