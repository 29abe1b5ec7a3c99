from pndecomp.script import materialized, setup
from pndecomp.stages.prepare import make_windows

config = setup(snakemake)
corpus = snakemake.input.corpus
make_windows(config, materialized(snakemake, "tokenizer"), corpus[0] if corpus else None,
             dict(snakemake.output.items()))
