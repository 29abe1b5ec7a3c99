from pndecomp.metric_stages import layer_summary
from pndecomp.script import setup

setup(snakemake)
layer_summary(dict(snakemake.input.items()), snakemake.output[0])
