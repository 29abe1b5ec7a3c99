from pndecomp.script import materialized, setup
from pndecomp.stages.train import train_predictor

config = setup(snakemake)
train_predictor(config, materialized(snakemake), snakemake.wildcards.layer, snakemake.input.train,
                snakemake.input.val, snakemake.output.weights, snakemake.output.curve,
                snakemake.params.resume, snakemake.output.cost, snakemake.input.get("storage_dtype"))
