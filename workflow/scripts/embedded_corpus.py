from pndecomp.script import setup
from pndecomp.stages.prepare import embedded_corpus

config = setup(snakemake)
embedded_corpus(config, snakemake.output.documents, snakemake.output.manifest)
