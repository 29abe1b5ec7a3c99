from pndecomp.script import layer_paths, materialized, setup
from pndecomp.stages.prepare import extract_activations

config = setup(snakemake)
extract_activations(config, materialized(snakemake), snakemake.input.windows,
                    layer_paths(snakemake.output, config["layers"]),
                    snakemake.output.get("surprisal"), snakemake.input.get("storage_dtype"),
                    snakemake.output.get("storage_dtype"))
