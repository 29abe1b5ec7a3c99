from pndecomp.metric_stages import per_position_metrics
from pndecomp.script import setup

config = setup(snakemake)
per_position_metrics(config, snakemake.input.hidden, snakemake.input.residual, snakemake.input.surprisal,
                     snakemake.input.windows, snakemake.output[0], snakemake.input.baselines)
