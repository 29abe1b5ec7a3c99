# Cache mode trains one layer per job on the layer's activations. Stream mode draws every step's
# windows from the predictor_train token store and runs the LM on them; with train.joint_layers one
# job trains every layer from one LM pass per step, else one job per layer runs its own.


if config["train"]["joint_layers"]:

    rule train_predictors_joint:
        input:
            **storage_dtype_choice(),
            model=model_input(),
            train=rules.make_windows.output.predictor_train_tokens,
            # the learning curve's windows: predictor_val (predictor_eval is scored once, after training)
            val=expand(f"{OUT}/activations/predictor_val/layer-{{layer}}.safetensors", layer=LAYERS),
        output:
            weights=expand(f"{PREDICTOR_DIR}/predictor.safetensors", layer=LAYERS, allow_missing=True),
            curves=expand(f"{PREDICTOR_DIR}/curve.parquet", layer=LAYERS, allow_missing=True),
            costs=expand(f"{PREDICTOR_DIR}/cost.json", layer=LAYERS, allow_missing=True),
        log:
            f"{OUT}/logs/train_predictors_joint/{{predictor}}.log",
        benchmark:
            f"{OUT}/benchmarks/train_predictors_joint/{{predictor}}.tsv"
        conda:
            "../../envs/pndecomp.yaml"
        threads: 1
        resources:
            mem_mb=stage_mem_mb("train_predictors_joint"),
            runtime=stage_runtime("train_predictors_joint"),
            gpu=stage_gpu("train_predictors_joint"),
        params:
            config=predictor_view(
                *PROVENANCE, "device", "layers", "predictor", "extraction.dtype", *pnconfig.train_keys(config)
            ),
            # Not outputs: Snakemake deletes the outputs of an interrupted job, and these must survive.
            resume=lambda wildcards: expand(f"{PREDICTOR_DIR}/.resume.pt", layer=LAYERS, **wildcards),
            code=code_version("train_predictors_joint"),
        script:
            "../scripts/train_predictors_joint.py"

else:

    rule train_predictor:
        input:
            **storage_dtype_choice(),
            model=model_input(),
            train=predictor_training_data(),
            val=f"{OUT}/activations/predictor_val/layer-{{layer}}.safetensors",
        output:
            weights=f"{PREDICTOR_DIR}/predictor.safetensors",
            curve=f"{PREDICTOR_DIR}/curve.parquet",
            cost=f"{PREDICTOR_DIR}/cost.json",
        log:
            f"{OUT}/logs/train_predictor/{{predictor}}/layer-{{layer}}.log",
        benchmark:
            f"{OUT}/benchmarks/train_predictor/{{predictor}}/layer-{{layer}}.tsv"
        conda:
            "../../envs/pndecomp.yaml"
        # One thread: a small predictor gains little from more, so layers train side by side instead.
        threads: 1
        resources:
            mem_mb=stage_mem_mb("train_predictor"),
            runtime=stage_runtime("train_predictor"),
            gpu=stage_gpu("train_predictor"),
        params:
            config=predictor_view(*PROVENANCE, "device", "predictor", "extraction.dtype", *pnconfig.train_keys(config)),
            # Not an output: Snakemake deletes the outputs of an interrupted job, and this must survive.
            resume=f"{PREDICTOR_DIR}/.resume.pt",
            code=code_version("train_predictor"),
        script:
            "../scripts/train_predictor.py"
