"""Every reference a reader meets can be followed: no citations of a specification the repository does not
have ("SPEC §": the method is docs/method.md), no numbers of a tracker it does not have ("issue 20": say
what changed), and every repository path named in the docs, configs, code and comments exists.

Each check returns its problems and is shown to catch a broken input below."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["README.md", "Makefile", "Snakefile", "config.yaml", "docs/**/*.md", "configs/**/*.yaml",
           "profiles/**/*.yaml", "envs/*.yaml", "src/**/*.py", "workflow/**/*.smk", "workflow/**/*.py",
           "workflow/**/*.rst", "bench/**/*.py", "bench/**/*.sh", "tests/**/*.py", "tests/**/*.sh", ".ci/run"]
TOP_FOLDERS = ("src", "workflow", "configs", "docs", "bench", "tests", "profiles", "envs")
UNFOLLOWABLE = [
    (re.compile(r"\bSPEC\b"), "cites a SPEC the repository does not have; cite docs/method.md's section"),
    # an upstream project's issue names its project on the same line ("snakemake-executor-plugin-slurm #447")
    (re.compile(r"\b[Ii]ssues? #?\d+|\b[Ii]ssues? \d+(?:,| and) \d+"),
     "names an issue of a tracker the repository does not have; say what changed"),
]
UPSTREAM = re.compile(r"[\w.-]+/[\w.-]+#\d+|snakemake|github\.com|upstream", re.I)
FOLDERS = "|".join(TOP_FOLDERS)
PATH = re.compile(r"(?<![\w/.<{-])((?:" + FOLDERS + r")/[\w./<>{}*\[\]-]*[\w>}*\]])|(?<![\w/.-])(pndecomp/[\w/]+\.py)")


def scanned_files(root: Path = ROOT) -> list[Path]:
    return sorted({path for pattern in SCANNED for path in root.glob(pattern) if path.is_file()} - {Path(__file__)})


def unfollowable_references(text: str, where: str) -> list[str]:
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        for pattern, why in UNFOLLOWABLE:
            match = pattern.search(line)
            if match and not (why.startswith("names an issue") and UPSTREAM.search(line)):
                problems.append(f"{where}:{number}: {match.group(0)!r} {why}")
    return problems


def dead_paths(text: str, where: str, root: Path = ROOT) -> list[str]:
    """Repository paths named in ``text`` that do not exist (a path with a placeholder -- <exp>, {layer}, *
    -- is a pattern, not a file; ``pndecomp/x.py`` is under src/)."""
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in PATH.finditer(line):
            named = match.group(1) or f"src/{match.group(2)}"
            # a pattern, or a regular expression's escaped dot
            if re.search(r"[<>{}*\[\]]", named) or line[match.end():].startswith("\\"):
                continue
            if not (root / named.rstrip(".")).exists():
                problems.append(f"{where}:{number}: {named} does not exist")
    return problems


@pytest.mark.parametrize("path", scanned_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_reference_can_be_followed(path):
    text = path.read_text(encoding="utf-8")
    where = str(path.relative_to(ROOT))
    # tests build fake trees (tmp_path) whose paths are theirs; their comments still cite nothing unfollowable
    dead = [] if where.startswith("tests/") else dead_paths(text, where)
    assert not unfollowable_references(text, where) + dead


def test_the_checks_catch_what_they_are_for(tmp_path):
    assert unfollowable_references("as SPEC §4 says", "x") and unfollowable_references("(issue 20)", "x")
    assert unfollowable_references("after issues 19 and 20", "x")
    assert not unfollowable_references("fails with MissingOutputException (snakemake-executor-plugin-slurm #447)", "x")
    assert not unfollowable_references("the paper's spectral view", "x")
    (tmp_path / "src" / "pndecomp").mkdir(parents=True)
    (tmp_path / "src" / "pndecomp" / "train.py").write_text("")
    text = "see src/pndecomp/train.py, `pndecomp/train.py`, pndecomp/stages.py and configs/gone.yaml; " \
           "results/<exp>/claims.tsv and workflow/rules/{stage}.smk are patterns"
    assert dead_paths(text, "x", tmp_path) == ["x:1: src/pndecomp/stages.py does not exist",
                                               "x:1: configs/gone.yaml does not exist"]
