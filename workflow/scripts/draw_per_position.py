import pandas as pd

from pndecomp.figures import per_position
from pndecomp.script import setup

setup(snakemake)  # noqa: F821 - injected by Snakemake
tables = {layer: pd.read_parquet(path) for layer, path in snakemake.input.items()}  # noqa: F821
per_position(tables, snakemake.params.column, snakemake.params.hide_first,  # noqa: F821
             snakemake.output.png, snakemake.output.pdf)  # noqa: F821
