from pndecomp.script import materialized, setup
from pndecomp.stages.metrics import score_baselines

config = setup(snakemake)
score_baselines(config, materialized(snakemake), snakemake.wildcards.layer, snakemake.input.train,
                snakemake.input.hidden, snakemake.output[0], snakemake.input.get("storage_dtype"))
