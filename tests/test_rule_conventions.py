"""What every rule of workflow/rules/*.smk declares, read from the rule files."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Rules that only write the run's record, nothing worth measuring.
RECORDS = {"resolved_config"}


def script_rules() -> dict[str, str]:
    """{rule name: its block of text}, for every rule that runs a script."""
    rules = {}
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"(?m)^ *rule ", path.read_text())[1:]:
            if "script:" in block:
                rules[block.split(":")[0]] = block
    return rules


def directive(block: str, name: str) -> str | None:
    """The first line of a directive's value, or None when the rule has no such directive."""
    match = re.search(rf"(?m)^ *{name}:\n *(.+?),?$", block)
    return match.group(1) if match else None


def test_every_rule_fingerprints_its_own_script():
    """Each rule's `code` param names the script its `script:` directive runs (a mismatch would track the
    wrong modules, pndecomp.code_version)."""
    rules = script_rules()
    assert len(rules) >= 30
    for name, block in rules.items():
        script = Path(directive(block, "script").strip('"')).stem
        assert f'code=code_version("{script}")' in block, name


def test_every_computing_rule_has_a_benchmark_beside_its_log():
    """`benchmark:` on every rule that computes, at its log's path under benchmarks/ (docs/usage.md's results tree)."""
    for name, block in script_rules().items():
        if name in RECORDS:
            continue
        log, benchmark = directive(block, "log"), directive(block, "benchmark")
        assert benchmark is not None, name
        assert benchmark == log.replace("/logs/", "/benchmarks/").replace('.log"', '.tsv"'), name
