from pndecomp.script import setup
from pndecomp.stages.decompose import decompose_eval

config = setup(snakemake)
decompose_eval(config, snakemake.input.hidden, snakemake.input.predictor,
               snakemake.output.residual, snakemake.output.scores, snakemake.input.get("storage_dtype"))
