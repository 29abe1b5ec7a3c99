from pndecomp.script import setup
from pndecomp.stages import embedded_corpus

config = setup(snakemake)
embedded_corpus(config, snakemake.output.documents, snakemake.output.manifest)
