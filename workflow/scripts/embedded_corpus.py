from pndecomp.script import materialized_model, setup
from pndecomp.stages import embedded_corpus

config = setup(snakemake)
embedded_corpus(config, materialized_model(snakemake), snakemake.output.documents, snakemake.output.manifest)
