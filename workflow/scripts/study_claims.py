from pndecomp.claims_files import write_study_scorecard
from pndecomp.script import setup

setup(snakemake)
write_study_scorecard(dict(zip(snakemake.params.models, snakemake.input, strict=True)), snakemake.output[0])
