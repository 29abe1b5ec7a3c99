from pndecomp.metric_stages import layer_scores
from pndecomp.script import materialized_model, setup

config = setup(snakemake)
layer_scores(config, materialized_model(snakemake), snakemake.input.hidden, snakemake.input.residual,
             snakemake.input.scores, snakemake.input.baselines, snakemake.input.windows, snakemake.output.scores,
             snakemake.output.tail)
