from pndecomp import storage
from pndecomp.compare import predictor_comparison
from pndecomp.script import setup

setup(snakemake)
params = snakemake.params
files = {kind: {name: {layer: getattr(params, kind).format(predictor=name, layer=layer) for layer in params.layers}
                for name in params.predictors}
         for kind in ("weights", "curves")}
table = predictor_comparison(dict(zip(params.predictors, snakemake.input.summaries)), files["weights"],
                             files["curves"])
storage.write_tsv(table, snakemake.output[0])
