from pndecomp.probe_stages import fit_probe
from pndecomp.script import setup

config = setup(snakemake)
fit_probe(config, snakemake.wildcards.task, snakemake.input.windows, snakemake.input.features,
          snakemake.output.scores, snakemake.output.differences)
