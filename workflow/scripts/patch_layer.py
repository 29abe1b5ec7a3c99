from pndecomp.script import materialized, setup
from pndecomp.stages.interventions import patch_layer

config = setup(snakemake)
patch_layer(config, materialized(snakemake), snakemake.wildcards.layer, snakemake.input.windows,
            snakemake.input.hidden, snakemake.input.predictor, snakemake.input.train, snakemake.output[0],
            snakemake.input.get("storage_dtype"))
