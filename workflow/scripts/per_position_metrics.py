from pndecomp.script import setup
from pndecomp.stages.metrics import per_position_metrics

config = setup(snakemake)
per_position_metrics(config, snakemake.input.hidden, snakemake.input.residual, snakemake.input.surprisal,
                     snakemake.input.windows, snakemake.output[0], snakemake.input.baselines)
