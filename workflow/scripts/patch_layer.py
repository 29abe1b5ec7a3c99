from pndecomp.intervention_stages import patch_layer
from pndecomp.script import materialized, setup

config = setup(snakemake)
patch_layer(config, materialized(snakemake), snakemake.wildcards.layer, snakemake.input.windows,
            snakemake.input.hidden, snakemake.input.predictor, snakemake.input.train, snakemake.output[0],
            snakemake.input.get("storage_dtype"))
