# One forward pass per split writes every configured layer; the pass stops after the deepest
# requested block, except for the eval split, whose surprisal needs the LM head (run in float32).
# With extraction.dtype auto the eval split's job chooses the storage dtype from its first batch
# (storage_dtype_choice), and the train split's job waits for that choice.


rule extract_train_activations:
    input:
        **storage_dtype_choice(),
        model=model_input(),
        windows=rules.make_windows.output.predictor_train,
    output:
        **per_layer(f"{OUT}/activations/predictor_train/layer-{{layer}}.safetensors"),
    log:
        f"{OUT}/logs/extract_train_activations.log",
    benchmark:
        f"{OUT}/benchmarks/extract_train_activations.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    threads: 2
    resources:
        mem_mb=stage_mem_mb("extract_train_activations"),
        runtime=stage_runtime("extract_train_activations"),
        gpu=stage_gpu("extract_train_activations"),
    params:
        config=view(*PROVENANCE, "device", "layers", "extraction"),
        code=code_version("extract_activations"),
    script:
        "../scripts/extract_activations.py"


# The learning curve's windows (predictor_val): small, read by every training job, so it runs before
# the baselines that compete with it for the cores (training is the longer path).
rule extract_val_activations:
    input:
        **storage_dtype_choice(),
        model=model_input(),
        windows=rules.make_windows.output.predictor_val,
    output:
        **per_layer(f"{OUT}/activations/predictor_val/layer-{{layer}}.safetensors"),
    log:
        f"{OUT}/logs/extract_val_activations.log",
    benchmark:
        f"{OUT}/benchmarks/extract_val_activations.tsv"
    priority: 1
    conda:
        "../../envs/pndecomp.yaml"
    threads: 2
    resources:
        mem_mb=stage_mem_mb("extract_val_activations"),
        runtime=stage_runtime("extract_val_activations"),
        gpu=stage_gpu("extract_val_activations"),
    params:
        config=view(*PROVENANCE, "device", "layers", "extraction"),
        code=code_version("extract_activations"),
    script:
        "../scripts/extract_activations.py"


rule extract_eval_activations:
    input:
        model=model_input(),
        windows=rules.make_windows.output.predictor_eval,
    output:
        **per_layer(f"{OUT}/activations/predictor_eval/layer-{{layer}}.safetensors"),
        **storage_dtype_choice(),
        surprisal=f"{OUT}/activations/predictor_eval/surprisal.safetensors",
    log:
        f"{OUT}/logs/extract_eval_activations.log",
    benchmark:
        f"{OUT}/benchmarks/extract_eval_activations.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    threads: 2
    resources:
        mem_mb=stage_mem_mb("extract_eval_activations"),
        runtime=stage_runtime("extract_eval_activations"),
        gpu=stage_gpu("extract_eval_activations"),
    params:
        config=view(*PROVENANCE, "device", "layers", "extraction"),
        code=code_version("extract_activations"),
    script:
        "../scripts/extract_activations.py"


# Only with probes.shared_states: the probe windows' whole states, for every predictor's probe_features.
rule extract_probe_activations:
    input:
        **storage_dtype_choice(),
        model=model_input(),
        windows=rules.make_windows.output.probe,
    output:
        **per_layer(f"{OUT}/activations/probe/layer-{{layer}}.safetensors"),
    log:
        f"{OUT}/logs/extract_probe_activations.log",
    benchmark:
        f"{OUT}/benchmarks/extract_probe_activations.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    threads: 2
    resources:
        mem_mb=stage_mem_mb("extract_probe_activations"),
        runtime=stage_runtime("extract_probe_activations"),
        gpu=stage_gpu("extract_probe_activations"),
    params:
        config=view(*PROVENANCE, "device", "layers", "extraction"),
        code=code_version("extract_activations"),
    script:
        "../scripts/extract_activations.py"
