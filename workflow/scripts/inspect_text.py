from pndecomp.decompose import inspect_page
from pndecomp.script import layer_paths, materialized, setup

config = setup(snakemake)
inspect_page(config, snakemake.params.text, layer_paths(snakemake.input, config["layers"]), snakemake.output.html,
             name=snakemake.wildcards.name, predictor_name=snakemake.params.predictor,
             materialized_dir=materialized(snakemake), tokenizer_dir=materialized(snakemake, "tokenizer"),
             storage_dtype_path=snakemake.input.get("storage_dtype"))
