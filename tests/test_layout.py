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
