# Comparisons across the configured predictors (issue: the paper's future work). Only in `all` when
# more than one predictor is configured; each is its own target.


rule predictor_comparison:
    input:
        summaries=expand(f"{OUT}/metrics/{{predictor}}/layer_summary.tsv", predictor=PREDICTORS),
        costs=expand(f"{PREDICTOR_DIR}/cost.json", predictor=PREDICTORS, layer=LAYERS),
    output:
        report(
            f"{OUT}/metrics/predictor_comparison.tsv",
            category="Predictor comparison",
            caption="../report/predictor_comparison.rst",
        ),
    log:
        f"{OUT}/logs/predictor_comparison.log",
    benchmark:
        f"{OUT}/benchmarks/predictor_comparison.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    params:
        predictors=PREDICTORS,
        layers=LAYERS,
        # the costs' pattern, for the script to find each (predictor, layer)'s file by name
        costs=lambda wildcards: f"{PREDICTOR_DIR}/cost.json",
        code=code_version("predictor_comparison"),
    script:
        "../scripts/predictor_comparison.py"


rule draw_predictor_comparison:
    input:
        rules.predictor_comparison.output[0],
    output:
        png=report(
            f"{OUT}/figures/predictor_comparison.png",
            category="Predictor comparison",
            caption="../report/predictor_comparison_figure.rst",
        ),
        pdf=f"{OUT}/figures/predictor_comparison.pdf",
    log:
        f"{OUT}/logs/figures/predictor_comparison.log",
    benchmark:
        f"{OUT}/benchmarks/figures/predictor_comparison.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    params:
        config=view("figures"),
        code=code_version("draw_predictor_comparison"),
    script:
        "../scripts/draw_predictor_comparison.py"


# A budget study (predictor entries that override train.steps): every metric against the budget.
rule budget_comparison:
    input:
        summaries=expand(f"{METRICS}/layer_summary.tsv", predictor=list(BUDGETS)),
        curves=expand(f"{PREDICTOR_DIR}/curve.parquet", predictor=list(BUDGETS), layer=LAYERS),
        differences=expand(f"{PROBES}/{{task}}_differences.tsv", predictor=list(BUDGETS), task=BUDGET_TASKS),
        patching=(
            expand(f"{INTERVENTIONS}/patching.tsv", predictor=list(BUDGETS))
            if config["interventions"]["enabled"]
            else []
        ),
        train_windows=rules.make_windows.output.predictor_train,
    output:
        report(
            f"{OUT}/metrics/budget_comparison.tsv",
            category="Predictor comparison",
            caption="../report/budget_comparison.rst",
        ),
    log:
        f"{OUT}/logs/budget_comparison.log",
    benchmark:
        f"{OUT}/benchmarks/budget_comparison.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    params:
        budgets=BUDGETS,
        kinds={name: PREDICTOR_KINDS[name] for name in BUDGETS},
        batch_sizes={name: pnentries.with_predictor(config, name)["train"]["batch_size"] for name in BUDGETS},
        layers=LAYERS,
        tasks=BUDGET_TASKS,
        # patterns, not paths: a function keeps Snakemake from filling their fields as wildcards
        patterns=lambda wildcards: {
            "summary": f"{METRICS}/layer_summary.tsv",
            "curve": f"{PREDICTOR_DIR}/curve.parquet",
            "differences": f"{PROBES}/{{task}}_differences.tsv",
            "patching": f"{INTERVENTIONS}/patching.tsv",
        },
        interventions=config["interventions"]["enabled"],
        code=code_version("budget_comparison"),
    script:
        "../scripts/budget_comparison.py"


rule draw_budget_comparison:
    input:
        rules.budget_comparison.output[0],
    output:
        png=report(
            f"{OUT}/figures/budget_comparison.png",
            category="Predictor comparison",
            caption="../report/budget_comparison_figure.rst",
        ),
        pdf=f"{OUT}/figures/budget_comparison.pdf",
    log:
        f"{OUT}/logs/figures/budget_comparison.log",
    benchmark:
        f"{OUT}/benchmarks/figures/budget_comparison.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    params:
        config=view("figures"),
        code=code_version("draw_budget_comparison"),
    script:
        "../scripts/draw_budget_comparison.py"
