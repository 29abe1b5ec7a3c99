"""pndecomp.code_version: the package modules a workflow script imports, and their fingerprint."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from pndecomp import code_version

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def package(tmp_path):
    """A synthetic package `fake`: the script imports `fake.top`, which imports `fake.helper` (one from
    inside a function, one relative) and `fake.sub.leaf`; `fake.unrelated` is imported by nobody."""
    root = tmp_path / "fake"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "top.py": "from . import helper\n\ndef draw():\n    from .sub.leaf import LEAF\n    return LEAF\n",
        "helper.py": "import os\nHELPER = 1\n",
        "sub/__init__.py": "",
        "sub/leaf.py": "from ..helper import HELPER\nLEAF = HELPER\n",
        "unrelated.py": "import fake.top\nUNRELATED = 2\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    script = tmp_path / "script.py"
    script.write_text("import pandas as pd\n\nfrom fake.top import draw\n\ndraw()\n")
    return script, root


def test_closure_follows_imports_through_modules_functions_and_relative_imports(package):
    script, root = package
    closure = code_version.module_closure(script, root, "fake")
    assert closure == {
        "fake": root / "__init__.py",
        "fake.top": root / "top.py",
        "fake.helper": root / "helper.py",
        "fake.sub": root / "sub" / "__init__.py",
        "fake.sub.leaf": root / "sub" / "leaf.py",
    }


def test_fingerprint_changes_with_an_imported_module_only(package):
    script, root = package
    before = code_version.fingerprint(script, root, "fake")
    assert code_version.fingerprint(script, root, "fake") == before  # no change, same fingerprint
    (root / "unrelated.py").write_text("UNRELATED = 3\n")
    assert code_version.fingerprint(script, root, "fake") == before
    (root / "sub" / "leaf.py").write_text("from ..helper import HELPER\nLEAF = HELPER + 1\n")  # transitively imported
    changed = code_version.fingerprint(script, root, "fake")
    assert changed != before
    (root / "helper.py").write_text("import os\nHELPER = 1  # a comment is a change too\n")
    assert code_version.fingerprint(script, root, "fake") not in (before, changed)


def test_workflow_scripts_closures():
    """The real scripts: a figure script reaches pndecomp.figures and no stage module; no script before the
    figures imports pndecomp.figures, so a change to it reruns the figures alone."""
    package_dir = code_version.package_dir()
    scripts = sorted((REPO / "workflow" / "scripts").glob("*.py"))
    closures = {script.stem: set(code_version.module_closure(script, package_dir)) for script in scripts}
    assert {"pndecomp", "pndecomp.figures", "pndecomp.script", "pndecomp.tasks"} <= closures["draw_layer_scores"]
    assert not closures["draw_layer_scores"] & {"pndecomp.stages", "pndecomp.train", "pndecomp.lm"}
    importers = {name for name, closure in closures.items() if "pndecomp.figures" in closure}
    assert importers == {name for name in closures if name.startswith("draw_")}
    # training runs pndecomp.train (through pndecomp.stages.train), so a change there reruns it
    assert "pndecomp.train" in closures["train_predictor"]


def test_finding_the_package_imports_none_of_it():
    """Building the DAG fingerprints every script; that must not import torch or matplotlib."""
    probe = ("import sys; from pndecomp import code_version as c; from pathlib import Path; "
             f"c.script_fingerprint(Path({str(REPO / 'workflow/scripts/train_predictor.py')!r})); "
             "print(sorted(m for m in sys.modules if m.startswith(('pndecomp.', 'torch', 'matplotlib'))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert ast.literal_eval(result.stdout.strip()) == ["pndecomp.code_version"]



def test_the_import_scan_finds_what_a_full_parse_finds_in_every_module_and_script():
    """import_statements reads the import lines alone (Snakemake pays for it at every start); a full parse of each
    file, walked node by node, is the reference."""
    repo = Path(__file__).resolve().parents[1]
    files = [*(repo / "src" / "pndecomp").rglob("*.py"), *(repo / "workflow" / "scripts").glob("*.py")]
    for path in files:
        source = path.read_text()
        full = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import | ast.ImportFrom)]
        assert sorted(map(ast.dump, code_version.import_statements(source))) == sorted(map(ast.dump, full)), path


def test_the_import_scan_skips_prose_and_keeps_nested_and_parenthesised_imports():
    source = '''"""Docstring
from which import the rest follows
"""
import os


def f():
    from .stages import (
        common,
        train,
    )
'''
    found = [ast.dump(node) for node in code_version.import_statements(source)]
    assert found == [ast.dump(ast.parse("import os").body[0]),
                     ast.dump(ast.parse("from .stages import (common, train)").body[0])]
