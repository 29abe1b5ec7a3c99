import pandas as pd

from pndecomp.figures import probe_heatmap
from pndecomp.script import setup

setup(snakemake)
table = pd.read_csv(snakemake.input[0], sep="\t", dtype={"layer": str})
probe_heatmap(table, snakemake.params.task, snakemake.output.png, snakemake.output.pdf)
