import pandas as pd

from pndecomp.figures import INTERVENTION_FIGURES
from pndecomp.script import setup

config = setup(snakemake)
table = pd.read_csv(snakemake.input[0], sep="\t", dtype={"layer": str})
INTERVENTION_FIGURES[snakemake.wildcards.intervention](table, snakemake.output.png, snakemake.output.pdf,
                                                       config["figures"]["dpi"])
