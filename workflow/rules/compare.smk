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
