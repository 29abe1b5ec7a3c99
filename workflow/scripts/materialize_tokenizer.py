from pndecomp.script import setup
from pndecomp.stages.prepare import materialize_tokenizer

config = setup(snakemake)
materialize_tokenizer(config, snakemake.output[0])
