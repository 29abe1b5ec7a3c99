from pndecomp.intervention_stages import steer_layer
from pndecomp.script import layer_paths, materialized, setup

config = setup(snakemake)
steer_layer(config, materialized(snakemake), snakemake.wildcards.layer, snakemake.input.windows,
            layer_paths(snakemake.input, snakemake.params.readout, "features_"), snakemake.output[0])
