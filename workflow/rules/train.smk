# Cache mode trains one layer per job on the layer's activations. Stream mode draws every step's
# windows from the predictor_train token store and runs the LM on them; with train.joint_layers one
# job trains every layer from one LM pass per step, else one job per layer runs its own.


if config["train"]["joint_layers"]:

    rule train_predictors_joint:
        input:
            **storage_dtype_choice(),
            model=model_input(),
            train=rules.make_windows.output.predictor_train_tokens,
            eval=expand(f"{OUT}/activations/predictor_eval/layer-{{layer}}.safetensors", layer=LAYERS),
        output:
            weights=expand(f"{OUT}/predictors/layer-{{layer}}/predictor.safetensors", layer=LAYERS),
            curves=expand(f"{OUT}/predictors/layer-{{layer}}/curve.parquet", layer=LAYERS),
        log:
            f"{OUT}/logs/train_predictors_joint.log",
        conda:
            "../../envs/pndecomp.yaml"
        threads: 1
        resources:
            mem_mb=stage_mem_mb("train_predictors_joint"),
            runtime=stage_runtime("train_predictors_joint"),
        params:
            config=view(*PROVENANCE, "device", "layers", "predictor", "train", "extraction.dtype"),
            # Not outputs: Snakemake deletes the outputs of an interrupted job, and these must survive.
            resume=expand(f"{OUT}/predictors/layer-{{layer}}/.resume.pt", layer=LAYERS),
        script:
            "../scripts/train_predictors_joint.py"

else:

    rule train_predictor:
        input:
            **storage_dtype_choice(),
            model=model_input(),
            train=predictor_training_data(),
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
            mem_mb=stage_mem_mb("train_predictor"),
            runtime=stage_runtime("train_predictor"),
        params:
            config=view(*PROVENANCE, "device", "predictor", "train", "extraction.dtype"),
            # Not an output: Snakemake deletes the outputs of an interrupted job, and this must survive.
            resume=f"{OUT}/predictors/layer-{{layer}}/.resume.pt",
        script:
            "../scripts/train_predictor.py"
