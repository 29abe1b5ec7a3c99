from pndecomp.metric_stages import layer_scores
from pndecomp.script import materialized, setup

config = setup(snakemake)
layer_scores(config, materialized(snakemake, "tokenizer"), snakemake.input.hidden, snakemake.input.residual,
             snakemake.input.scores, snakemake.input.baselines, snakemake.input.windows, snakemake.output.scores,
             snakemake.output.tail)
