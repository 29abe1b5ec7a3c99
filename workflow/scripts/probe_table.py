from pndecomp.script import setup
from pndecomp.stages.probes import probe_table

setup(snakemake)
layers = [str(layer) for layer in snakemake.params.layers]
control = snakemake.input.get("control")
probe_table(dict(zip(layers, snakemake.input.scores)), snakemake.output.table,
            dict(zip(layers, snakemake.input.differences)), snakemake.output.differences,
            dict(zip(layers, control)) if control else None)
