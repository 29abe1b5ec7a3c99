from pndecomp.script import setup
from pndecomp.stages.prepare import materialize_model

config = setup(snakemake)
materialize_model(config, snakemake.output[0])
