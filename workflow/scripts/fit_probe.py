from pndecomp.script import setup
from pndecomp.stages.probes import fit_probe

config = setup(snakemake)
fit_probe(config, snakemake.wildcards.task, snakemake.input.windows, snakemake.input.features,
          snakemake.output.scores, snakemake.output.differences)
