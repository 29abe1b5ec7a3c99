from pndecomp.script import layer_paths, materialized, setup
from pndecomp.stages.decompose import probe_features

config = setup(snakemake)
probe_features(config, materialized(snakemake), snakemake.input.windows,
               layer_paths(snakemake.input, config["layers"]), layer_paths(snakemake.output, config["layers"]),
               snakemake.input.get("storage_dtype"), layer_paths(snakemake.input, config["layers"], "states_"))
