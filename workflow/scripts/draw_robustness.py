import pandas as pd

from pndecomp.script import setup
from pndecomp.study_figures import robustness_grid

config = setup(snakemake)
grid = pd.read_csv(snakemake.input[0], sep="\t", keep_default_na=False, na_values=[""])
robustness_grid(grid, snakemake.output.png, snakemake.output.pdf, config["figures"]["dpi"])
