import pandas as pd

from pndecomp.figures import learning_curves
from pndecomp.script import setup

config = setup(snakemake)
curves = {layer: pd.read_parquet(path) for layer, path in snakemake.input.items()}
learning_curves(curves, snakemake.params.column, snakemake.output.png, snakemake.output.pdf, config["figures"]["dpi"])
