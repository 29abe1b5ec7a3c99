from pndecomp.robustness import write_robustness
from pndecomp.script import setup

setup(snakemake)
params = snakemake.params
write_robustness(snakemake.input[0], params.dimensions, params.controls, snakemake.output.table,
                 snakemake.output.grid)
