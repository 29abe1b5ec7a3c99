rule decompose_eval:
    input:
        **storage_dtype_choice(),
        hidden=f"{OUT}/activations/predictor_eval/layer-{{layer}}.safetensors",
        predictor=f"{PREDICTOR_DIR}/predictor.safetensors",
    output:
        residual=f"{RESIDUALS}/predictor_eval/layer-{{layer}}.safetensors",
        scores=f"{METRICS}/eval_scores/layer-{{layer}}.json",
    log:
        f"{OUT}/logs/decompose_eval/{{predictor}}/layer-{{layer}}.log",
    benchmark:
        f"{OUT}/benchmarks/decompose_eval/{{predictor}}/layer-{{layer}}.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=stage_mem_mb("decompose_eval"),
        runtime=stage_runtime("decompose_eval"),
        gpu=stage_gpu("decompose_eval"),
    params:
        config=view(*PROVENANCE, "device", "extraction"),
        code=code_version("decompose_eval"),
    script:
        "../scripts/decompose_eval.py"


# One LM pass over the probe windows serves every layer of one predictor: whole probe windows are
# never stored, only h_T, ĥ_T, r_T and h_mean. With probes.shared_states, one LM pass
# (extract_probe_activations) stores them and serves every predictor instead.
rule probe_features:
    input:
        **per_layer(f"{PREDICTOR_DIR}/predictor.safetensors"),
        **storage_dtype_choice(),
        **probe_features_lm_input(),
        windows=rules.make_windows.output.probe,
    output:
        **per_layer(f"{OUT}/probe_features/{{predictor}}/layer-{{layer}}.safetensors"),
    log:
        f"{OUT}/logs/probe_features/{{predictor}}.log",
    benchmark:
        f"{OUT}/benchmarks/probe_features/{{predictor}}.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    threads: 2
    resources:
        mem_mb=stage_mem_mb("probe_features"),
        runtime=stage_runtime("probe_features"),
        gpu=stage_gpu("probe_features"),
    params:
        config=view(*PROVENANCE, "device", "layers", "extraction"),
        code=code_version("probe_features"),
    script:
        "../scripts/probe_features.py"
