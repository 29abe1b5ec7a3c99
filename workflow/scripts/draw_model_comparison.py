import pandas as pd

from pndecomp.script import setup
from pndecomp.study_figures import model_comparison

config = setup(snakemake)
table = pd.read_csv(snakemake.input[0], sep="\t", dtype={"layer": str})
model_comparison(table, snakemake.output.png, snakemake.output.pdf, config["figures"]["dpi"])
