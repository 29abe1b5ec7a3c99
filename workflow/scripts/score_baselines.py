from pndecomp.metric_stages import score_baselines
from pndecomp.script import materialized, setup

config = setup(snakemake)
score_baselines(config, materialized(snakemake), snakemake.wildcards.layer, snakemake.input.train,
                snakemake.input.hidden, snakemake.output[0], snakemake.input.get("storage_dtype"))
