from pndecomp.script import materialized_model, setup
from pndecomp.stages import train_predictor

config = setup(snakemake)  # noqa: F821 - injected by Snakemake
train_predictor(config, materialized_model(snakemake), snakemake.input.train, snakemake.input.eval,  # noqa: F821
                snakemake.output.weights, snakemake.output.curve, snakemake.params.resume)  # noqa: F821
