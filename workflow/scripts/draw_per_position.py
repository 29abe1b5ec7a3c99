import pandas as pd

from pndecomp.figures import per_position
from pndecomp.script import setup

config = setup(snakemake)
tables = {layer: pd.read_parquet(path) for layer, path in snakemake.input.items()}
per_position(tables, snakemake.params.column, config["metrics"]["hide_first_positions"],
             snakemake.output.png, snakemake.output.pdf, config["figures"]["dpi"])
