from pndecomp.script import setup
from pndecomp.stages import per_position_metrics

config = setup(snakemake)
per_position_metrics(config, snakemake.input.residual, snakemake.input.surprisal, snakemake.output[0])
