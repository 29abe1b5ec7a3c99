# Each figure is its own target, drawn from small metric files: `snakemake <OUT>/figures/fig3.png`
# regenerates one in seconds.


rule fig1_mse_curve:
    input:
        **per_layer(f"{OUT}/predictors/layer-{{layer}}/curve.parquet"),
    output:
        png=report(f"{OUT}/figures/fig1.png", category="Predictor training", caption="../report/fig1.rst"),
        pdf=f"{OUT}/figures/fig1.pdf",
    params:
        column="eval_mse",
    log:
        f"{OUT}/logs/figures/fig1.log",
    conda:
        "../../envs/pndecomp.yaml"
    script:
        "../scripts/draw_learning_curve.py"


rule fig2_r2_curve:
    input:
        **per_layer(f"{OUT}/predictors/layer-{{layer}}/curve.parquet"),
    output:
        png=report(f"{OUT}/figures/fig2.png", category="Predictor training", caption="../report/fig2.rst"),
        pdf=f"{OUT}/figures/fig2.pdf",
    params:
        column="eval_r2",
    log:
        f"{OUT}/logs/figures/fig2.log",
    conda:
        "../../envs/pndecomp.yaml"
    script:
        "../scripts/draw_learning_curve.py"


rule fig3_position_mse:
    input:
        **per_layer(f"{OUT}/metrics/per_position/layer-{{layer}}.parquet"),
    output:
        png=report(f"{OUT}/figures/fig3.png", category="Per position", caption="../report/fig3.rst"),
        pdf=f"{OUT}/figures/fig3.pdf",
    params:
        column="mse",
        hide_first=config["metrics"]["hide_first_positions"],
    log:
        f"{OUT}/logs/figures/fig3.log",
    conda:
        "../../envs/pndecomp.yaml"
    script:
        "../scripts/draw_per_position.py"


rule fig4_position_spearman:
    input:
        **per_layer(f"{OUT}/metrics/per_position/layer-{{layer}}.parquet"),
    output:
        png=report(f"{OUT}/figures/fig4.png", category="Per position", caption="../report/fig4.rst"),
        pdf=f"{OUT}/figures/fig4.pdf",
    params:
        column="spearman_rho",
        hide_first=config["metrics"]["hide_first_positions"],
    log:
        f"{OUT}/logs/figures/fig4.log",
    conda:
        "../../envs/pndecomp.yaml"
    script:
        "../scripts/draw_per_position.py"


rule fig5_domain_probe:
    input:
        f"{OUT}/probes/domain.tsv",
    output:
        png=report(f"{OUT}/figures/fig5.png", category="Linear probes", caption="../report/fig5.rst"),
        pdf=f"{OUT}/figures/fig5.pdf",
    params:
        task="domain",
    log:
        f"{OUT}/logs/figures/fig5.log",
    conda:
        "../../envs/pndecomp.yaml"
    script:
        "../scripts/draw_probe_heatmap.py"


rule fig6_token_type_probe:
    input:
        f"{OUT}/probes/next_token_type_8.tsv",
    output:
        png=report(f"{OUT}/figures/fig6.png", category="Linear probes", caption="../report/fig6.rst"),
        pdf=f"{OUT}/figures/fig6.pdf",
    params:
        task="next_token_type_8",
    log:
        f"{OUT}/logs/figures/fig6.log",
    conda:
        "../../envs/pndecomp.yaml"
    script:
        "../scripts/draw_probe_heatmap.py"
