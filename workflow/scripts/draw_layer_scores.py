import pandas as pd

from pndecomp.figures import layer_scores
from pndecomp.script import setup

config = setup(snakemake)
summary = pd.read_csv(snakemake.input[0], sep="\t", dtype={"layer": str})
layer_scores(summary, snakemake.output.png, snakemake.output.pdf, config["figures"]["dpi"])
