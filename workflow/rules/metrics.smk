rule per_position_metrics:
    input:
        residual=rules.decompose_eval.output.residual,
        surprisal=rules.extract_eval_activations.output.surprisal,
    output:
        f"{OUT}/metrics/per_position/layer-{{layer}}.parquet",
    log:
        f"{OUT}/logs/per_position_metrics/layer-{{layer}}.log",
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        config=view(*PROVENANCE),
    script:
        "../scripts/per_position_metrics.py"


rule layer_summary:
    input:
        **per_layer(f"{OUT}/metrics/eval_scores/layer-{{layer}}.json"),
    output:
        report(f"{OUT}/metrics/layer_summary.tsv", category="Tables", caption="../report/layer_summary.rst"),
    log:
        f"{OUT}/logs/layer_summary.log",
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    script:
        "../scripts/layer_summary.py"
