# Scores with context: baselines fit on predictor_train, the predictor's R² beside them with
# document-level bootstrap intervals, robust views, per-position metrics with bands.


rule score_baselines:
    input:
        **storage_dtype_choice(),
        model=model_input(),
        train=train_data(),
        hidden=f"{OUT}/activations/predictor_eval/layer-{{layer}}.safetensors",
    output:
        f"{OUT}/metrics/baselines/layer-{{layer}}.parquet",
    log:
        f"{OUT}/logs/score_baselines/layer-{{layer}}.log",
    benchmark:
        f"{OUT}/benchmarks/score_baselines/layer-{{layer}}.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=stage_mem_mb("score_baselines"),
        runtime=stage_runtime("score_baselines"),
        gpu=stage_gpu("score_baselines"),
    params:
        config=view(
            *PROVENANCE, "device", "metrics.baselines", "metrics.baseline_train_windows", "train.data", "extraction"
        ),
        code=code_version("score_baselines"),
    script:
        "../scripts/score_baselines.py"


rule layer_scores:
    input:
        tokenizer=tokenizer_input(),
        hidden=f"{OUT}/activations/predictor_eval/layer-{{layer}}.safetensors",
        residual=rules.decompose_eval.output.residual,
        scores=rules.decompose_eval.output.scores,
        baselines=rules.score_baselines.output[0],
        windows=rules.make_windows.output.predictor_eval,
    output:
        scores=f"{METRICS}/layer_scores/layer-{{layer}}.json",
        tail=report(
            f"{METRICS}/tail/layer-{{layer}}.tsv",
            category="Tables",
            caption="../report/tail.rst",
            labels={"table": "worst rows", "predictor": "{predictor}", "layer": "{layer}"},
        ),
    log:
        f"{OUT}/logs/layer_scores/{{predictor}}/layer-{{layer}}.log",
    benchmark:
        f"{OUT}/benchmarks/layer_scores/{{predictor}}/layer-{{layer}}.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=stage_mem_mb("layer_scores"),
        runtime=stage_runtime("layer_scores"),
    params:
        config=view(*PROVENANCE, "metrics", "extraction.batch_size"),
        code=code_version("layer_scores"),
    script:
        "../scripts/layer_scores.py"


rule per_position_metrics:
    input:
        hidden=f"{OUT}/activations/predictor_eval/layer-{{layer}}.safetensors",
        residual=rules.decompose_eval.output.residual,
        surprisal=rules.extract_eval_activations.output.surprisal,
        windows=rules.make_windows.output.predictor_eval,
        # ρ for the best baseline's residual beside the predictor's
        baselines=rules.score_baselines.output[0],
    output:
        f"{METRICS}/per_position/layer-{{layer}}.parquet",
    log:
        f"{OUT}/logs/per_position_metrics/{{predictor}}/layer-{{layer}}.log",
    benchmark:
        f"{OUT}/benchmarks/per_position_metrics/{{predictor}}/layer-{{layer}}.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=stage_mem_mb("per_position_metrics"),
        runtime=stage_runtime("per_position_metrics"),
    params:
        config=view(*PROVENANCE, "metrics.bootstrap", "extraction.batch_size"),
        code=code_version("per_position_metrics"),
    script:
        "../scripts/per_position_metrics.py"


rule layer_summary:
    input:
        **per_layer(f"{METRICS}/layer_scores/layer-{{layer}}.json"),
    output:
        report(
            f"{METRICS}/layer_summary.tsv",
            category="Tables",
            caption="../report/layer_summary.rst",
            labels={"table": "layer summary", "predictor": "{predictor}"},
        ),
    log:
        f"{OUT}/logs/layer_summary/{{predictor}}.log",
    benchmark:
        f"{OUT}/benchmarks/layer_summary/{{predictor}}.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    params:
        code=code_version("layer_summary"),
    script:
        "../scripts/layer_summary.py"
