from pndecomp.script import setup
from pndecomp.stages import layer_summary

setup(snakemake)  # noqa: F821 - injected by Snakemake
layer_summary(dict(snakemake.input.items()), snakemake.output[0])  # noqa: F821
