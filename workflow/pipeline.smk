# The whole pipeline for one model: the Snakefile includes it directly, or (a model study, config
# `models:`) once per model as a module. Stages, in order:
# model -> corpus -> windows -> extract -> train -> decompose -> metrics/probes -> interventions -> figures
# -> comparisons -> the claims scorecard; the per-token pages of inspect.texts.


include: "rules/common.smk"
include: "rules/code_version.smk"
include: "rules/materialize_model.smk"
include: "rules/corpus.smk"
include: "rules/windows.smk"
include: "rules/extract.smk"
include: "rules/train.smk"
include: "rules/decompose.smk"
include: "rules/metrics.smk"
include: "rules/probes.smk"
include: "rules/interventions.smk"
include: "rules/figures.smk"
include: "rules/inspect.smk"
include: "rules/compare.smk"
include: "rules/claims.smk"
include: "rules/config.smk"


# Everything this model's run makes; the Snakefile's `all` (or a model study's) asks for it.
rule pipeline:
    input:
        all_targets(),


ALL_TARGETS = rules.pipeline.input
