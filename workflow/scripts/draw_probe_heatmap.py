import pandas as pd

from pndecomp.figures import probe_heatmap
from pndecomp.script import setup

setup(snakemake)  # noqa: F821 - injected by Snakemake
table = pd.read_csv(snakemake.input[0], sep="\t", dtype={"layer": str})  # noqa: F821
probe_heatmap(table, snakemake.params.task, snakemake.output.png, snakemake.output.pdf)  # noqa: F821
