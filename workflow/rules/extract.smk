# One forward pass per split writes every configured layer; the pass stops after the deepest
# requested block, except for the eval split, whose surprisal needs the LM head.


rule extract_train_activations:
    input:
        model=model_input(),
        windows=rules.make_windows.output.predictor_train,
    output:
        **per_layer(f"{OUT}/activations/predictor_train/layer-{{layer}}.safetensors"),
    log:
        f"{OUT}/logs/extract_train_activations.log",
    conda:
        "../../envs/pndecomp.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        config=view(*PROVENANCE, "device", "layers", "extraction"),
    script:
        "../scripts/extract_activations.py"


rule extract_eval_activations:
    input:
        model=model_input(),
        windows=rules.make_windows.output.predictor_eval,
    output:
        **per_layer(f"{OUT}/activations/predictor_eval/layer-{{layer}}.safetensors"),
        surprisal=f"{OUT}/activations/predictor_eval/surprisal.safetensors",
    log:
        f"{OUT}/logs/extract_eval_activations.log",
    conda:
        "../../envs/pndecomp.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        config=view(*PROVENANCE, "device", "layers", "extraction"),
    script:
        "../scripts/extract_activations.py"
