from pndecomp.script import materialized_model, setup
from pndecomp.stages import make_windows

config = setup(snakemake)  # noqa: F821 - injected by Snakemake
corpus = snakemake.input.corpus  # noqa: F821
make_windows(config, materialized_model(snakemake), corpus[0] if corpus else None,  # noqa: F821
             dict(snakemake.output.items()))  # noqa: F821
