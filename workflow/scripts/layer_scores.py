from pndecomp.script import materialized, setup
from pndecomp.stages.metrics import layer_scores

config = setup(snakemake)
layer_scores(config, materialized(snakemake, "tokenizer"), snakemake.input.hidden, snakemake.input.residual,
             snakemake.input.scores, snakemake.input.baselines, snakemake.input.windows, snakemake.output.scores,
             snakemake.output.tail)
