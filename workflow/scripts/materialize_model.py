from pndecomp.script import setup
from pndecomp.stages import materialize_model

config = setup(snakemake)  # noqa: F821 - injected by Snakemake
materialize_model(config, snakemake.output[0])  # noqa: F821
