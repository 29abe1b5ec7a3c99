from pndecomp.script import setup
from pndecomp.stages import collect_tables

setup(snakemake)  # noqa: F821 - injected by Snakemake
collect_tables(dict(snakemake.input.items()), snakemake.output[0])  # noqa: F821
