from pndecomp.script import setup
from pndecomp.stages import decompose_eval

config = setup(snakemake)  # noqa: F821 - injected by Snakemake
decompose_eval(config, snakemake.input.hidden, snakemake.input.predictor,  # noqa: F821
               snakemake.output.residual, snakemake.output.scores)  # noqa: F821
