# A model study (config `models:`): the whole pipeline (../pipeline.smk) once per model as a Snakemake
# module, its rules prefixed <model>_ and its files under results/<experiment>/<model>/, then the
# comparison across models. Adding a model adds its own jobs and reruns only the comparison.

from pndecomp import config as pnconfig
from pndecomp import config_schema as pnschema
from pndecomp import predictor_entries as pnentries
from pndecomp.overrides import load_schema

pnschema.check(config, load_schema(workflow.source_path("../schemas/config.schema.yaml")))

STUDY = f"results/{config['experiment']}"


include: "code_version.smk"


MODEL_CONFIGS = pnconfig.model_configs(config)
# The models' names come from the config, so the modules are declared through the API that the
# `module` and `use rule * from ... as ...` statements compile to.
for model_name, model_config in MODEL_CONFIGS.items():
    workflow.module(name=f"model_{model_name}", snakefile="../pipeline.smk", config=model_config)
    workflow.userule(
        rules=["*"], from_module=f"model_{model_name}", exclude_rules=[], name_modifier=f"{model_name}_*", lineno=1
    )(lambda: None)
# Relative depth of each model's layers: what the comparison plots against.
DEPTHS = {name: pnconfig.relative_depths(model_config) for name, model_config in MODEL_CONFIGS.items()}
MAIN = {name: pnentries.predictor_names(model_config)[0] for name, model_config in MODEL_CONFIGS.items()}
GAP_TASKS = [task for task in ("domain", "next_token_type_8") if task in config["probes"]["tasks"]]


include: "config.smk"


rule model_comparison:
    input:
        summaries=[f"{STUDY}/{name}/metrics/{MAIN[name]}/layer_summary.tsv" for name in MODEL_CONFIGS],
        differences=[
            f"{STUDY}/{name}/probes/{MAIN[name]}/{task}_differences.tsv"
            for name in MODEL_CONFIGS
            for task in GAP_TASKS
        ],
    output:
        report(f"{STUDY}/model_comparison.tsv", category="Model comparison", caption="../report/model_comparison.rst"),
    log:
        f"{STUDY}/logs/model_comparison.log",
    benchmark:
        f"{STUDY}/benchmarks/model_comparison.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    params:
        models=list(MODEL_CONFIGS),
        depths=DEPTHS,
        tasks=GAP_TASKS,
        code=code_version("model_comparison"),
    script:
        "../scripts/model_comparison.py"


rule draw_model_comparison:
    input:
        rules.model_comparison.output[0],
    output:
        png=report(
            f"{STUDY}/figures/model_comparison.png",
            category="Model comparison",
            caption="../report/model_comparison_figure.rst",
        ),
        pdf=f"{STUDY}/figures/model_comparison.pdf",
    log:
        f"{STUDY}/logs/figures/model_comparison.log",
    benchmark:
        f"{STUDY}/benchmarks/figures/model_comparison.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    params:
        config=pnconfig.config_view(config, "figures"),
        code=code_version("draw_model_comparison"),
    script:
        "../scripts/draw_model_comparison.py"


rule study_claims:
    input:
        [f"{STUDY}/{name}/claims.tsv" for name in MODEL_CONFIGS],
    output:
        report(
            f"{STUDY}/claims.tsv",
            category="Claims",
            caption="../report/claims.rst",
            labels={"table": "claims scorecard", "model": "all models"},
        ),
    log:
        f"{STUDY}/logs/study_claims.log",
    benchmark:
        f"{STUDY}/benchmarks/study_claims.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    params:
        models=list(MODEL_CONFIGS),
        code=code_version("study_claims"),
    script:
        "../scripts/study_claims.py"


# Which findings survive what (pndecomp.robustness): the study's scorecard across its settings (model x
# predictor x budget x seed), the untrained controls (model.random_init) apart.
rule robustness:
    input:
        rules.study_claims.output[0],
    output:
        table=report(
            f"{STUDY}/robustness.tsv",
            category="Claims",
            caption="../report/robustness.rst",
            labels={"table": "robustness across settings", "model": "all models"},
        ),
        grid=f"{STUDY}/robustness_grid.tsv",
    log:
        f"{STUDY}/logs/robustness.log",
    benchmark:
        f"{STUDY}/benchmarks/robustness.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    params:
        dimensions={name: pnentries.dimensions(model_config) for name, model_config in MODEL_CONFIGS.items()},
        controls=[name for name, model_config in MODEL_CONFIGS.items() if model_config["model"]["random_init"]],
        code=code_version("robustness"),
    script:
        "../scripts/robustness.py"


rule draw_robustness:
    input:
        rules.robustness.output.grid,
    output:
        png=report(
            f"{STUDY}/figures/robustness.png",
            category="Claims",
            caption="../report/robustness_figure.rst",
            labels={"figure": "robustness across settings", "model": "all models"},
        ),
        pdf=f"{STUDY}/figures/robustness.pdf",
    log:
        f"{STUDY}/logs/figures/robustness.log",
    benchmark:
        f"{STUDY}/benchmarks/figures/robustness.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    params:
        config=pnconfig.config_view(config, "figures"),
        code=code_version("draw_robustness"),
    script:
        "../scripts/draw_robustness.py"


localrules:
    all,
    model_comparison,
    draw_model_comparison,
    study_claims,
    robustness,
    draw_robustness,


ALL_TARGETS = [
    rules.resolved_config.output[0],
    *[path for name in MODEL_CONFIGS for path in getattr(rules, f"{name}_pipeline").input],
    *rules.model_comparison.output,
    *rules.study_claims.output,
    rules.robustness.output.table,
    rules.draw_robustness.output.png,
    rules.draw_model_comparison.output.png,
]
