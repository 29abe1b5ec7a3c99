import pandas as pd

from pndecomp.figures import r2_by_layer
from pndecomp.script import setup

config = setup(snakemake)
table = pd.read_csv(snakemake.input[0], sep="\t", dtype={"layer": str})
r2_by_layer(table, "Predictors (solid) vs baselines (dashed), 95 % bootstrap intervals", snakemake.output.png,
            snakemake.output.pdf, config["figures"]["dpi"])
