from pndecomp.config import layer_names
from pndecomp.script import materialized, setup
from pndecomp.stages.train import PredictorFiles, train_predictors

config = setup(snakemake)
# The rule lists each layer's files in config layer order.
files = zip(snakemake.input.val, snakemake.output.weights, snakemake.output.curves, snakemake.params.resume,
            snakemake.output.costs, strict=True)
train_predictors(config, materialized(snakemake), snakemake.input.train,
                 dict(zip(layer_names(config), (PredictorFiles(*paths) for paths in files), strict=True)),
                 snakemake.input.get("storage_dtype"))
