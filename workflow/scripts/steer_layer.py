from pndecomp.script import layer_paths, materialized, setup
from pndecomp.stages.interventions import steer_layer

config = setup(snakemake)
steer_layer(config, materialized(snakemake), snakemake.wildcards.layer, snakemake.input.windows,
            layer_paths(snakemake.input, snakemake.params.readout, "features_"), snakemake.output[0])
