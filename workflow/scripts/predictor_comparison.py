from pndecomp import storage
from pndecomp.compare import predictor_comparison
from pndecomp.script import setup

setup(snakemake)
params = snakemake.params
costs = {name: {layer: params.costs.format(predictor=name, layer=layer) for layer in params.layers}
         for name in params.predictors}
storage.write_tsv(predictor_comparison(dict(zip(params.predictors, snakemake.input.summaries)), costs),
                  snakemake.output[0])
