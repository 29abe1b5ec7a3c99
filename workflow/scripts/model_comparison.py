from pndecomp import storage
from pndecomp.compare import model_comparison
from pndecomp.script import setup

setup(snakemake)
params = snakemake.params
# the inputs list each model's differences in params.tasks order
per_model = len(params.tasks)
differences = {model: dict(zip(params.tasks, snakemake.input.differences[index * per_model:(index + 1) * per_model]))
               for index, model in enumerate(params.models)}
table = model_comparison(dict(zip(params.models, snakemake.input.summaries)), differences, params.depths)
storage.write_tsv(table, snakemake.output[0])
