from pndecomp.script import layer_paths, materialized_model, setup
from pndecomp.stages import extract_activations

config = setup(snakemake)  # noqa: F821 - injected by Snakemake
extract_activations(config, materialized_model(snakemake), snakemake.input.windows,  # noqa: F821
                    layer_paths(snakemake.output, config["layers"]),  # noqa: F821
                    snakemake.output.get("surprisal"))  # noqa: F821
