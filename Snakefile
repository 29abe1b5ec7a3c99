# pndecomp: split a frozen LM's hidden states into a predictable and a novel component.
# Stages, in order: model -> corpus -> windows -> extract -> train -> decompose -> metrics/probes -> figures.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/windows.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/decompose.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/probes.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        all_targets(),
