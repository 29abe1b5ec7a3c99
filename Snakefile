# pndecomp: split a frozen LM's hidden states into a predictable and a novel component.
# One model: workflow/pipeline.smk. A model study (config `models:`): the pipeline once per model, under
# results/<experiment>/<model>/, plus the comparison across models (workflow/rules/models.smk).

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


if config.get("models"):

    include: "workflow/rules/models.smk"

else:

    include: "workflow/pipeline.smk"


rule all:
    default_target: True
    input:
        ALL_TARGETS,
