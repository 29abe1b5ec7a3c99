from pndecomp.script import materialized_model, setup
from pndecomp.stages import train_predictor

config = setup(snakemake)  # noqa: F821 - injected by Snakemake
train_predictor(config, materialized_model(snakemake), snakemake.wildcards.layer, snakemake.input.train,  # noqa: F821
                snakemake.input.eval, snakemake.output.weights, snakemake.output.curve,  # noqa: F821
                snakemake.params.resume)  # noqa: F821
