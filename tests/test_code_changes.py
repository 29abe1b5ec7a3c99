"""A change to a pndecomp module reruns the jobs whose scripts import it, and nothing else.

The tiny workflow makes figure 1 (and everything it needs); then a copy of the package, put first on
PYTHONPATH, stands for a changed checkout: Snakemake's process finds pndecomp there (so do its jobs), and
its code_version params change for exactly the rules whose scripts import the changed module.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from snakemake_log import planned_jobs
from tiny import write_config

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "2"]
FIGURE = "results/tiny/figures/fig1.png"

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, package_root: Path | None = None) -> str:
    env = dict(os.environ)
    if package_root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(package_root), *filter(None, [env.get("PYTHONPATH")])])
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def figure_run(tmp_path_factory, tiny_model_dir, tiny_corpus):
    workdir = tmp_path_factory.mktemp("code-changes")
    # an explicit storage dtype: no eval extraction needed for figure 1
    write_config(workdir / "config.yaml", tiny_model_dir, tiny_corpus, **{"extraction.dtype": "float32"})
    snakemake(workdir, FIGURE)
    return workdir


@pytest.fixture
def package_copy(tmp_path):
    """A copy of the pndecomp sources that this Python imports from, under tmp_path/src."""
    from pndecomp.code_version import package_dir

    copy = tmp_path / "src" / "pndecomp"
    shutil.copytree(package_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_unchanged_code_is_a_no_op(figure_run, package_copy):
    assert "Nothing to be done" in snakemake(figure_run, "-n", FIGURE)
    # the same source at another place is the same code
    assert "Nothing to be done" in snakemake(figure_run, "-n", FIGURE, package_root=package_copy.parent)


def test_changed_figure_module_reruns_the_figure_alone(figure_run, package_copy):
    figures = package_copy / "figures.py"
    figures.write_text(figures.read_text() + "\n# a change to the figure code\n")
    # the subprocess resolves pndecomp to the copy, not to the checkout
    probe = "import importlib.util; print(importlib.util.find_spec('pndecomp').origin)"
    env = {**os.environ, "PYTHONPATH": str(package_copy.parent)}
    origin = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert Path(origin.stdout.strip()) == package_copy / "__init__.py"

    jobs = planned_jobs(snakemake(figure_run, "-n", FIGURE, package_root=package_copy.parent))
    assert [job["rule"] for job in jobs] == ["draw_learning_curve"]
    assert "params" in jobs[0]["reason"].lower(), jobs[0]

