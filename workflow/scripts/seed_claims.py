from pndecomp.robustness import write_seed_claims
from pndecomp.script import setup

setup(snakemake)
write_seed_claims(snakemake.input[0], snakemake.params.seeds, snakemake.output[0])
