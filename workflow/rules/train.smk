rule train_predictor:
    input:
        model=model_input(),
        train=train_data(),
        eval=f"{OUT}/activations/predictor_eval/layer-{{layer}}.safetensors",
    output:
        weights=f"{OUT}/predictors/layer-{{layer}}/predictor.safetensors",
        curve=f"{OUT}/predictors/layer-{{layer}}/curve.parquet",
    log:
        f"{OUT}/logs/train_predictor/layer-{{layer}}.log",
    conda:
        "../../envs/pndecomp.yaml"
    # One thread: a small predictor gains little from more, so layers train side by side instead.
    threads: 1
    resources:
        mem_mb=8000,
        runtime=600,
    params:
        config=view(*PROVENANCE, "device", "predictor", "train", "extraction.dtype"),
        # Not an output: Snakemake deletes the outputs of an interrupted job, and this must survive.
        resume=f"{OUT}/predictors/layer-{{layer}}/.resume.pt",
    script:
        "../scripts/train_predictor.py"
