"""The blocks of the docs that mirror the code or a run's files, generated rather than typed.

A block sits between two marker lines::

    <!-- generated: NAME [ARGUMENTS] -->
    ...
    <!-- generated: end -->

NAME is one of :data:`GENERATORS`; ARGUMENTS name its source (a run's file, a config). ``python -m
pndecomp.docs [FILE ...]`` rewrites every block whose source is there (README.md and docs/*.md by default)
and says which it left as they were; ``--check`` rewrites nothing and fails where a block differs from what
its source gives now. The tests check that every block names a generator, that a run's file it reads is one
the workflow writes, and that the blocks made from the code are current.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import doc_tables

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^<!-- generated: (?P<name>[\w-]+)(?P<arguments>[^\n]*?) -->\n"
                   r"(?P<body>.*?)^<!-- generated: end -->$", re.S | re.M)


def _read_tsv(path: str) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"layers": str, "layer": str}, keep_default_na=False, na_values=[""])


def _claims_card(path: str) -> str:
    from .claims import markdown

    return markdown(_read_tsv(path))


def _robustness(path: str) -> str:
    from .robustness import markdown

    return markdown(_read_tsv(path).fillna({"layer_group": ""}))


def _layer_table(run: str, *options: str) -> str:
    from .results import layer_table, load

    mask = options[options.index("--mask") + 1] + "_" if "--mask" in options else ""
    return layer_table(load(run), mask=mask)


def _resources(config: str, *options: str) -> str:
    from .resources.__main__ import table

    return table(config, options[options.index("--shape") + 1] if "--shape" in options else None)


def _slurm_rules() -> str:
    """Where each rule runs: its own SLURM job on a CPU or with a GPU, or in the Snakemake process (local)."""
    from .registry import RULES

    groups = {"CPU job": [], "GPU job (`gpu: 1`)": [], "local (in the Snakemake process)": []}
    for name, rule in RULES.items():
        where = "local (in the Snakemake process)" if rule.local else "GPU job (`gpu: 1`)" if rule.gpu else "CPU job"
        groups[where].append(f"`{name}`" + (f" (only in a study of {rule.study})" if rule.study else ""))
    lines = ["| where it runs | rules |", "|---|---|"]
    lines += [f"| {where} | {', '.join(names)} |" for where, names in groups.items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Generator:
    """How one kind of block is made: ``render(*arguments)``; ``reads``, a regular expression of the run's output
    it takes as its first argument ("" when it reads the code or a config in the repository)."""

    render: Callable[..., str]
    reads: str = ""


GENERATORS: dict[str, Generator] = {
    "claims-card": Generator(_claims_card, r"results/[\w./-]+/claims\.tsv"),
    "robustness": Generator(_robustness, r"results/[\w./-]+/robustness\.tsv"),
    "layer-table": Generator(_layer_table, r"results/[\w.-]+"),  # a run's directory
    "model-comparison": Generator(doc_tables.model_comparison, r"results/[\w./-]+/model_comparison\.tsv"),
    "predictor-comparison": Generator(doc_tables.predictor_comparison, r"results/[\w./-]+/predictor_comparison\.tsv"),
    "predictor-probe-gaps": Generator(doc_tables.predictor_probe_gaps, r"results/[\w./-]+/predictor_comparison\.tsv"),
    "budget-training": Generator(doc_tables.budget_training, r"results/[\w./-]+/budget_comparison\.tsv"),
    "budget-probe-gaps": Generator(doc_tables.budget_probe_gaps, r"results/[\w./-]+/budget_comparison\.tsv"),
    "resources": Generator(_resources),
    "slurm-rules": Generator(_slurm_rules),
}


@dataclass(frozen=True)
class Block:
    path: Path
    name: str
    arguments: list[str]
    body: str

    @property
    def source_present(self) -> bool:
        """Whether what it reads is here (a run's results are not in the repository)."""
        return not self.arguments or (ROOT / self.arguments[0]).exists()

    def render(self) -> str:
        return GENERATORS[self.name].render(*self.arguments)


def blocks(path: Path) -> list[Block]:
    return [Block(path, match["name"], shlex.split(match["arguments"]), match["body"])
            for match in BLOCK.finditer(path.read_text(encoding="utf-8"))]


def rewrite(path: Path) -> tuple[list[Block], list[Block]]:
    """Rewrite the blocks of ``path`` whose source is here; (rewritten, left as they were)."""
    text = path.read_text(encoding="utf-8")
    done, left = [], []

    def replace(match: re.Match) -> str:
        block = Block(path, match["name"], shlex.split(match["arguments"]), match["body"])
        if not block.source_present:
            left.append(block)
            return match.group(0)
        done.append(block)
        return f"<!-- generated: {block.name}{match['arguments']} -->\n{block.render()}<!-- generated: end -->"
    path.write_text(BLOCK.sub(replace, text), encoding="utf-8")
    return done, left


def default_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pndecomp.docs [--check] [FILE ...]``: rewrite the generated blocks of the docs (README.md and
    docs/*.md) from the code and from the runs whose files are here; --check: only report blocks that differ."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md, docs/*.md)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a block is stale")
    args = parser.parse_args(argv)
    stale = []
    for path in args.files or default_files():
        unknown = sorted({block.name for block in blocks(path)} - set(GENERATORS))
        if unknown:
            parser.error(f"{path}: unknown generated block(s) {unknown}; known are {sorted(GENERATORS)}")
        if args.check:
            stale += [f"{path}: {block.name} {' '.join(block.arguments)}" for block in blocks(path)
                      if block.source_present and block.render() != block.body]
            continue
        done, left = rewrite(path)
        for block in left:
            print(f"{path.name}: {block.name}: left as it was ({block.arguments[0]} is not here)", file=sys.stderr)
        if done:
            print(f"{path.name}: rewrote {len(done)} block(s)")
    if stale:
        print("stale generated blocks (run python -m pndecomp.docs):\n" + "\n".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
