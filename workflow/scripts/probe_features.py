from pndecomp.script import layer_paths, materialized_model, setup
from pndecomp.stages import probe_features

config = setup(snakemake)  # noqa: F821 - injected by Snakemake
probe_features(config, materialized_model(snakemake), snakemake.input.windows,  # noqa: F821
               layer_paths(snakemake.input, config["layers"]), layer_paths(snakemake.output, config["layers"]))  # noqa: F821
