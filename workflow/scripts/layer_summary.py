from pndecomp.script import setup
from pndecomp.stages.metrics import layer_summary

setup(snakemake)
layer_summary(dict(snakemake.input.items()), snakemake.output[0])
