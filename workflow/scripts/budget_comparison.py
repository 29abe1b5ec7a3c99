from pndecomp.compare import write_budget_comparison
from pndecomp.script import setup

setup(snakemake)
params = snakemake.params
write_budget_comparison(params.budgets, params.kinds, params.batch_sizes, params.layers, params.tasks, params.patterns,
                        params.interventions, snakemake.input.train_windows, snakemake.output[0])
