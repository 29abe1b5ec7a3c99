from pndecomp.script import setup
from pndecomp.stages import fit_probe

config = setup(snakemake)  # noqa: F821 - injected by Snakemake
fit_probe(config, snakemake.wildcards.task, snakemake.input.windows, snakemake.input.features,  # noqa: F821
          snakemake.output[0])  # noqa: F821
