# Each figure is its own target, drawn from small metric files: `snakemake <OUT>/figures/fig3.png`
# regenerates one in seconds. One rule per kind of figure; which figures exist, their data column
# and caption are entries of pndecomp.registry.FIGURES and (heatmaps) pndecomp.tasks.TASKS. They show the
# first configured predictor (MAIN_PREDICTOR); comparisons across predictors are drawn by compare.smk.


rule draw_learning_curve:
    input:
        **per_layer(f"{OUT}/predictors/{MAIN_PREDICTOR}/layer-{{layer}}/curve.parquet"),
    output:
        png=report(f"{OUT}/figures/{{figure}}.png", category="Predictor training", caption="../report/figure.rst"),
        pdf=f"{OUT}/figures/{{figure}}.pdf",
    log:
        f"{OUT}/logs/figures/{{figure}}.log",
    benchmark:
        f"{OUT}/benchmarks/figures/{{figure}}.tsv"
    wildcard_constraints:
        figure=figures_of("learning_curve"),
    conda:
        "../../envs/pndecomp.yaml"
    params:
        config=view("figures"),
        column=lambda wildcards: FIGURES[wildcards.figure].column,
        caption=lambda wildcards: FIGURES[wildcards.figure].caption,
        code=code_version("draw_learning_curve"),
    script:
        "../scripts/draw_learning_curve.py"


rule draw_per_position:
    input:
        **per_layer(f"{OUT}/metrics/{MAIN_PREDICTOR}/per_position/layer-{{layer}}.parquet"),
    output:
        png=report(f"{OUT}/figures/{{figure}}.png", category="Per position", caption="../report/figure.rst"),
        pdf=f"{OUT}/figures/{{figure}}.pdf",
    log:
        f"{OUT}/logs/figures/{{figure}}.log",
    benchmark:
        f"{OUT}/benchmarks/figures/{{figure}}.tsv"
    wildcard_constraints:
        figure=figures_of("per_position"),
    conda:
        "../../envs/pndecomp.yaml"
    params:
        config=view("figures", "metrics.hide_first_positions"),
        column=lambda wildcards: FIGURES[wildcards.figure].column,
        caption=lambda wildcards: FIGURES[wildcards.figure].caption,
        code=code_version("draw_per_position"),
    script:
        "../scripts/draw_per_position.py"


rule draw_layer_scores:
    input:
        f"{OUT}/metrics/{MAIN_PREDICTOR}/layer_summary.tsv",
    output:
        png=report(f"{OUT}/figures/{{figure}}.png", category="Predictor training", caption="../report/figure.rst"),
        pdf=f"{OUT}/figures/{{figure}}.pdf",
    log:
        f"{OUT}/logs/figures/{{figure}}.log",
    benchmark:
        f"{OUT}/benchmarks/figures/{{figure}}.tsv"
    wildcard_constraints:
        figure=figures_of("layer_scores"),
    conda:
        "../../envs/pndecomp.yaml"
    params:
        config=view("figures"),
        caption=lambda wildcards: FIGURES[wildcards.figure].caption,
        code=code_version("draw_layer_scores"),
    script:
        "../scripts/draw_layer_scores.py"


rule draw_probe_heatmap:
    input:
        table=lambda wildcards: f"{OUT}/probes/{MAIN_PREDICTOR}/{HEATMAPS[wildcards.figure]}.tsv",
        differences=lambda wildcards: f"{OUT}/probes/{MAIN_PREDICTOR}/{HEATMAPS[wildcards.figure]}_differences.tsv",
    output:
        png=report(f"{OUT}/figures/{{figure}}.png", category="Linear probes", caption="../report/figure.rst"),
        pdf=f"{OUT}/figures/{{figure}}.pdf",
    log:
        f"{OUT}/logs/figures/{{figure}}.log",
    benchmark:
        f"{OUT}/benchmarks/figures/{{figure}}.tsv"
    wildcard_constraints:
        figure="|".join(HEATMAPS) or "none",
    conda:
        "../../envs/pndecomp.yaml"
    params:
        config=view("figures"),
        task=lambda wildcards: HEATMAPS[wildcards.figure],
        caption=lambda wildcards: pnregistry.TASKS[HEATMAPS[wildcards.figure]].caption,
        code=code_version("draw_probe_heatmap"),
    script:
        "../scripts/draw_probe_heatmap.py"
