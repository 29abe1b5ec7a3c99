from pndecomp.intervention_stages import intervention_table
from pndecomp.script import setup

setup(snakemake)
intervention_table(list(snakemake.input), snakemake.output[0])
