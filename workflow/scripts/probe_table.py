from pndecomp.script import setup
from pndecomp.stages import probe_table

setup(snakemake)
probe_table(dict(snakemake.input.items()), snakemake.output[0])
