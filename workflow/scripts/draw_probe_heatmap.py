import pandas as pd

from pndecomp.figures import probe_heatmap
from pndecomp.script import setup

config = setup(snakemake)
table = pd.read_csv(snakemake.input.table, sep="\t", dtype={"layer": str})
differences = pd.read_csv(snakemake.input.differences, sep="\t", dtype={"layer": str})
probe_heatmap(table, snakemake.params.task, snakemake.output.png, snakemake.output.pdf, differences=differences,
              dpi=config["figures"]["dpi"])
