"""The adapter helpers in pndecomp.script, against what a real Snakemake hands a ``script:``."""
import subprocess
import sys
import textwrap
from pathlib import Path

SNAKEFILE = """
rule with_model:
    input: model=["model_dir"]
    output: "with_model.txt"
    script: "report.py"

rule without_model:
    input: model=[]
    output: "without_model.txt"
    script: "report.py"
"""

REPORT = """
from pndecomp.script import materialized
open(snakemake.output[0], "w").write(repr(materialized(snakemake)))
"""


def test_materialized_model_reads_the_one_item_list_snakemake_passes(tmp_path: Path):
    # model_input() is a list; a check for a plain string once sent every job back to the GGUF file.
    (tmp_path / "Snakefile").write_text(textwrap.dedent(SNAKEFILE))
    (tmp_path / "report.py").write_text(textwrap.dedent(REPORT))
    (tmp_path / "model_dir").mkdir()
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--quiet", "all", "--",
                    "with_model.txt", "without_model.txt"], cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "with_model.txt").read_text() == "'model_dir'"
    assert (tmp_path / "without_model.txt").read_text() == "None"
