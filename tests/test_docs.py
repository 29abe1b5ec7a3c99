"""The documentation stays whole and true to the repository (no workflow run; well under a second).

* every relative link and image of README.md and docs/*.md resolves to a file, and its #anchor to a
  heading of the target (GitHub's heading slugs), same-file anchors included;
* every config key they name in backticks (`train.steps`, `probes.caps.<task>`) is in the schema;
* the README keeps the sections it had before they were lost once (commit 8cd41f1), or links to
  where their content went;
* docs/config.md is what ``python -m pndecomp.config_doc`` renders from the schema, and every schema
  key has a description.

Each check is a function that returns its problems, and each is shown to catch a broken input below.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from pndecomp import config_doc

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"

#: Every section heading of README.md at 8cd41f1^ (before the regression that lost six of them).
README_HEADINGS = [
    "pndecomp — predictable and novel components of an LM's hidden states",
    "Two commands on a fresh machine",
    "Using it",
    "Reading results in Python",
    "Numbers with context",
    "The default's numbers, and what changed in them",
    "The claims scorecard",
    "The paper's settings",
    "Paper-scale estimate (one modern GPU)",
    "Choices made where the paper is silent",
    "The embedded corpus",
    "Tests",
    "Studies: predictors and models (the paper's future work)",
    "Interventions: does the model use ĥ and r? (the paper's future work)",
    "Extending",
]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
FILE_SUFFIX = re.compile(r"\.(py|md|yaml|yml|smk|tsv|json|jsonl|png|pdf|svg|parquet|safetensors|pt|sh|txt|html|zst|"
                         r"lock|toml|bin|gguf|rst)$")
KEY = re.compile(r"^[A-Za-z_]\w*(?:\.(?:\w+|<[^<>\s]+>))+$")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The Markdown without fenced code blocks (their lines blanked, so line numbers stay)."""
    return FENCE.sub(lambda match: "\n" * match.group(0).count("\n"), text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercased, punctuation and symbols removed (letters of
    any script, digits, marks, '_' and '-' kept), spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LNM")
    return kept.replace(" ", "-")


def headings(text: str) -> list[str]:
    return [match.group(2).strip() for match in HEADING.finditer(prose(text))]


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated slug gets -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for heading in headings(text):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_links(path: Path) -> list[str]:
    """Relative links of ``path`` whose file or #anchor does not exist."""
    problems = []
    text = prose(path.read_text(encoding="utf-8"))
    text = CODE_SPAN.sub(lambda match: " " * len(match.group(0)), text)  # `[x](y)` in code is not a link
    for match in LINK.finditer(text):
        target = match.group(1)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        line = text.count("\n", 0, match.start()) + 1
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}: {target}"
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{where}: no file {linked}")
            continue
        if anchor and (linked.suffix != ".md" or anchor not in anchors(linked.read_text(encoding="utf-8"))):
            problems.append(f"{where}: no heading with anchor #{anchor} in {linked.name}")
    return problems


def named_config_keys(text: str, sections: set[str]) -> set[str]:
    """Dotted config keys named in backticks (`train.steps`, `train.data: stream`) whose first component
    is a top-level schema section; file names (`figures.py`) are not keys."""
    keys = set()
    for match in CODE_SPAN.finditer(prose(text)):
        token = match.group(2).strip().split(":", 1)[0].strip() if ": " in match.group(2) else match.group(2).strip()
        if KEY.match(token) and token.split(".")[0] in sections and not FILE_SUFFIX.search(token):
            keys.add(token)
    return keys


def key_in_schema(key: str, schema: dict) -> bool:
    """Walk the schema's properties; a <placeholder> or a user-chosen name goes through additionalProperties."""
    node = schema
    for part in key.split("."):
        properties = node.get("properties") or {}
        extra = node.get("additionalProperties")
        if part in properties:
            node = properties[part]
        elif isinstance(extra, dict):
            node = extra
            if not extra.get("properties"):
                return True  # free-form values (e.g. predictors.<name>: overrides checked elsewhere)
        else:
            return False
    return True


def module_attribute(token: str) -> bool:
    """`figures.layer_scores`: a function or constant of a pndecomp module that shares a section's name."""
    module, name = token.split(".")[:2]
    source = ROOT / "src" / "pndecomp" / f"{module}.py"
    pattern = rf"^(?:async\s+)?(?:def|class)\s+{re.escape(name)}\b|^{re.escape(name)}\s*[:=]"
    return source.exists() and re.search(pattern, source.read_text(encoding="utf-8"), re.M) is not None


def unknown_config_keys(path: Path, schema: dict) -> list[str]:
    keys = named_config_keys(path.read_text(encoding="utf-8"), set(schema["properties"]))
    return sorted(f"{path.name}: `{key}`" for key in keys if not key_in_schema(key, schema)
                  and not module_attribute(key))


def lost_readme_sections(readme: Path, required: list[str] = README_HEADINGS) -> list[str]:
    """Required headings that are neither in the README nor in a docs page the README links to."""
    text = readme.read_text(encoding="utf-8")
    present = set(headings(text))
    linked_pages = {(readme.parent / m.group(1).partition("#")[0]).resolve()
                    for m in LINK.finditer(prose(text)) if m.group(1).partition("#")[0].endswith(".md")}
    moved = {h for page in linked_pages if page.exists() for h in headings(page.read_text(encoding="utf-8"))}
    return [heading for heading in required if heading not in present and heading not in moved]


def config_doc_problems(schema_path: Path = SCHEMA, doc: Path = ROOT / "docs" / "config.md") -> list[str]:
    schema = config_doc.load_schema(schema_path)
    problems = [f"schema key without a description: {key}" for key in config_doc.undocumented(schema)]
    if not doc.exists() or doc.read_text(encoding="utf-8") != config_doc.render(schema):
        problems.append(f"{doc.name} is stale: run `python -m pndecomp.config_doc`")
    return problems


# ------------------------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: path.name)
def test_relative_links_and_anchors_resolve(path):
    assert broken_links(path) == []


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: path.name)
def test_named_config_keys_are_in_the_schema(path):
    assert unknown_config_keys(path, config_doc.load_schema(SCHEMA)) == []


def test_readme_keeps_its_sections():
    assert lost_readme_sections(ROOT / "README.md") == []


def test_config_doc_matches_the_schema_and_every_key_is_described():
    assert config_doc_problems() == []


def test_config_doc_check_command_agrees():
    assert config_doc.main(["--check"]) == 0


# ----------------------------------------------------------------------------- each check catches a break


def test_slugs_follow_github():
    assert slug("Studies: predictors and models (the paper's future work)") == \
        "studies-predictors-and-models-the-papers-future-work"
    assert slug("Interventions: does the model use ĥ and r? (the paper's future work)") == \
        "interventions-does-the-model-use-ĥ-and-r-the-papers-future-work"
    assert slug("`bench/gpu.sh`: GPU readiness check") == "benchgpush-gpu-readiness-check"
    assert slug("2. Objects and conventions") == "2-objects-and-conventions"
    assert slug("Paper-scale estimate (one modern GPU)") == "paper-scale-estimate-one-modern-gpu"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_a_broken_link_or_anchor_is_reported(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md#a-section) [self](#page) [web](https://example.org/x#y)\n"
                    "`[in code](missing.md)`\n```\n[in a fence](missing.md)\n```\n"
                    "[gone](missing.md) [bad anchor](other.md#no-such-section) [bad self](#nowhere)\n")
    problems = broken_links(page)
    assert len(problems) == 3, problems
    assert "no file" in problems[0] and "#no-such-section" in problems[1] and "#nowhere" in problems[2]


def test_an_unknown_config_key_is_reported(tmp_path):
    schema = config_doc.load_schema(SCHEMA)
    page = tmp_path / "page.md"
    page.write_text("`train.steps`, `train.data: stream`, `probes.caps.<task>`, `probes.caps.domain.probe_val`,\n"
                    "`models.pythia.id`, `predictors.wide`, `figures.py`, `pndecomp.figures.FIGURES`,\n"
                    "`metrics/<p>/tail.tsv`, `figures.layer_scores` (a function), and two typos: `train.step`,\n"
                    "`probes.caps.domain.probe_vall`\n")
    assert unknown_config_keys(page, schema) == ["page.md: `probes.caps.domain.probe_vall`", "page.md: `train.step`"]


def test_a_lost_readme_section_is_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "moved.md").write_text("# Moved\n\n## Tests\n")
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\n## Using it\n\nTests: [docs/moved.md](docs/moved.md).\n")
    assert lost_readme_sections(readme, ["Title", "Using it", "Tests", "Numbers with context"]) == \
        ["Numbers with context"]


def test_a_stale_config_doc_or_an_undescribed_key_is_reported(tmp_path):
    schema_text = SCHEMA.read_text(encoding="utf-8")
    doc = tmp_path / "config.md"
    doc.write_text((ROOT / "docs" / "config.md").read_text(encoding="utf-8") + "\nedited by hand\n")
    assert config_doc_problems(SCHEMA, doc) == ["config.md is stale: run `python -m pndecomp.config_doc`"]
    undescribed = tmp_path / "schema.yaml"
    undescribed.write_text(schema_text.replace("properties:\n", "properties:\n  extra_key: {type: integer}\n", 1))
    doc.write_text(config_doc.render(config_doc.load_schema(undescribed)))
    assert config_doc_problems(undescribed, doc) == ["schema key without a description: extra_key"]
    assert config_doc.main(["--schema", str(undescribed), "--output", str(doc), "--check"]) == 1


def test_the_default_scorecard_is_a_generated_card():
    """docs/results.md's card sits between the generator's markers, in its format: every row a claim of
    pndecomp.claims.CLAIMS with a verdict of the rule, as shown (marked when not converged), and whether its
    predictors converged (python -m pndecomp.docs rewrites it from the default's claims.tsv)."""
    from pndecomp import claims, docs

    card = [block for block in docs.blocks(ROOT / "docs" / "results.md") if block.name == "claims-card"]
    assert len(card) == 1 and card[0].arguments == ["results/embedded-smollm2/claims.tsv"]
    block = card[0].body
    rows = [line for line in block.splitlines() if line.startswith("| ")][1:]  # without the header (and |---|)
    statements = tuple(claim.statement for claim in claims.CLAIMS)
    assert rows, "the default's scorecard block is empty"
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[0].startswith(statements), row
        verdict, converged = cells[-2].strip("*"), cells[-1]
        assert converged in ("yes", "no", ""), row
        assert verdict in {claims.shown_verdict(name, converged != "no" and None) for name in claims.VERDICTS}, row


# ------------------------------------------------------------------ generated blocks


def generated_block_problems(paths: list[Path]) -> list[str]:
    """Blocks that name no generator, that read a run's file the generator does not read, or that are made
    from the code and differ from what it gives now."""
    from pndecomp import docs

    problems = []
    for path in paths:
        for block in docs.blocks(path):
            where = f"{path.name}: {block.name} {' '.join(block.arguments)}"
            generator = docs.GENERATORS.get(block.name)
            if generator is None:
                problems.append(f"{where}: no generator of that name in pndecomp.docs.GENERATORS")
            elif generator.reads:
                source = block.arguments[0] if block.arguments else ""
                if not re.fullmatch(generator.reads, source):
                    problems.append(f"{where}: reads {source!r}, not a run's file ({generator.reads})")
            elif block.render() != block.body:
                problems.append(f"{where}: stale; run python -m pndecomp.docs")
    return problems


def test_generated_blocks_have_generators_and_the_code_made_ones_are_current():
    assert generated_block_problems(markdown_files()) == []


def test_a_block_without_generator_source_or_update_is_reported(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- generated: nonesuch -->\n<!-- generated: end -->\n"
                    "<!-- generated: claims-card docs/claims.md -->\n<!-- generated: end -->\n"
                    "<!-- generated: slurm-rules -->\n| where it runs | rules |\n<!-- generated: end -->\n")
    problems = generated_block_problems([page])
    assert [problem.split(":")[1].strip().split()[0] for problem in problems] == ["nonesuch", "claims-card",
                                                                                 "slurm-rules"], problems
