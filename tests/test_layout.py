"""The package's layout: small modules, stage modules side by side, and the modules Snakemake
imports to build the DAG free of torch, transformers and the plotting libraries."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pndecomp"
MAX_LINES = 400
# What common.smk imports, and what they import in turn (the dry-run test in test_workflow covers the rest).
DAG_MODULES = ["pndecomp.config", "pndecomp.config_schema", "pndecomp.registry", "pndecomp.resources",
               "pndecomp.tasks", "pndecomp.overrides", "pndecomp.predictor_kinds", "pndecomp.patch_kinds",
               "pndecomp.predictor_entries", "pndecomp.model_files"]
HEAVY = ["torch", "transformers", "matplotlib", "seaborn", "plotly"]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_is_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def _imported_modules(path: Path) -> set[str]:
    """The pndecomp.stages modules ``path`` imports (relative imports of the stages package)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.update([node.module] if node.module else [alias.name for alias in node.names])
    return names


@pytest.mark.parametrize("path", sorted((PACKAGE / "stages").glob("*.py")), ids=lambda path: path.name)
def test_stage_modules_import_no_other_stage_module(path):
    stage_modules = {other.stem for other in (PACKAGE / "stages").glob("*.py")} - {"__init__", "common", path.stem}
    assert not _imported_modules(path) & stage_modules


def test_the_modules_that_build_the_dag_import_no_torch_transformers_or_plotting_library():
    code = (f"import sys\nimport {', '.join(DAG_MODULES)}\n"
            f"print(sorted(name for name in {HEAVY!r} if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def layout_map_problems(layout: str, package: Path = PACKAGE) -> list[str]:
    """Where docs/layout.md's tree of the package and the package's modules disagree."""
    import re

    tree = layout.split("```\nsrc/pndecomp/\n", 1)[1].split("```", 1)[0]
    named = set(re.findall(r"(\w+\.py)\b", tree))
    modules = {path.name for path in package.rglob("*.py") if path.name != "__init__.py"}
    return ([f"{name}: in the package, not in docs/layout.md" for name in sorted(modules - named)]
            + [f"{name}: in docs/layout.md, not in the package" for name in sorted(named - modules)])


def test_docs_layout_names_every_module_and_no_other():
    layout = (PACKAGE.parents[1] / "docs" / "layout.md").read_text(encoding="utf-8")
    assert layout_map_problems(layout) == []


def test_a_module_missing_from_the_map_or_a_removed_one_is_reported(tmp_path):
    (tmp_path / "kept.py").write_text("")
    (tmp_path / "new.py").write_text("")
    layout = "```\nsrc/pndecomp/\n├── kept.py   x\n├── gone.py   y\n```\n"
    assert layout_map_problems(layout, tmp_path) == ["new.py: in the package, not in docs/layout.md",
                                                     "gone.py: in docs/layout.md, not in the package"]
