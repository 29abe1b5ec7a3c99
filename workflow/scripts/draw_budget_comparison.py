import pandas as pd

from pndecomp.script import setup
from pndecomp.study_figures import budget_comparison

config = setup(snakemake)
table = pd.read_csv(snakemake.input[0], sep="\t", dtype={"layer": str})
budget_comparison(table, snakemake.output.png, snakemake.output.pdf, config["figures"]["dpi"])
