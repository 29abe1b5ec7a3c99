from pndecomp.script import setup
from pndecomp.stages.interventions import intervention_table

setup(snakemake)
intervention_table(list(snakemake.input), snakemake.output[0])
