from pndecomp.claims_files import write_scorecard
from pndecomp.script import setup

setup(snakemake)
params = snakemake.params
write_scorecard(params.predictors, params.layers, params.tasks, params.patterns, params.missing, snakemake.output[0])
