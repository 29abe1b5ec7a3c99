from pndecomp.config_files import write_resolved
from pndecomp.script import setup

write_resolved(setup(snakemake), snakemake.output[0])
