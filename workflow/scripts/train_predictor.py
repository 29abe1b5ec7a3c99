from pndecomp.script import materialized_model, setup
from pndecomp.stages import train_predictor

config = setup(snakemake)
train_predictor(config, materialized_model(snakemake), snakemake.wildcards.layer, snakemake.input.train,
                snakemake.input.eval, snakemake.output.weights, snakemake.output.curve,
                snakemake.params.resume, snakemake.input.get("storage_dtype"))
