# Causal tests of the decomposition: does the model use what ĥ and r carry? One job per (predictor,
# layer, intervention), so adding a layer runs only its jobs. Patching runs the blocks above ℓ from the
# stored clean states of a few eval windows; steering runs its probe_test windows up to ℓ itself.
# One thread each: on a small machine two of them, or one beside a probe fit, share the cores better
# than one job on two threads (two single-thread float32 matmuls do 2.2x one thread's, two threads 1.8x).


rule patch_layer:
    input:
        **storage_dtype_choice(),
        model=model_input(),
        train=train_data(),
        windows=rules.make_windows.output.predictor_eval,
        hidden=f"{OUT}/activations/predictor_eval/layer-{{layer}}.safetensors",
        predictor=f"{PREDICTOR_DIR}/predictor.safetensors",
    output:
        f"{INTERVENTIONS}/patching/layer-{{layer}}.parquet",
    log:
        f"{OUT}/logs/patch_layer/{{predictor}}/layer-{{layer}}.log",
    benchmark:
        f"{OUT}/benchmarks/patch_layer/{{predictor}}/layer-{{layer}}.tsv"
    wildcard_constraints:
        layer="embed|[0-9]+",
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=stage_mem_mb("patch_layer"),
        runtime=stage_runtime("patch_layer"),
        gpu=stage_gpu("patch_layer"),
    params:
        config=view(
            *PROVENANCE,
            "device",
            "extraction",
            "train.data",
            "metrics.bootstrap",
            "metrics.baseline_train_windows",
            "interventions.from_position",
            "interventions.recompute_hhat",
            "interventions.batch_size",
            "interventions.patching_windows",
        ),
        code=code_version("patch_layer"),
    script:
        "../scripts/patch_layer.py"


rule steer_layer:
    input:
        unpack(steering_features),
        model=model_input(),
        windows=rules.make_windows.output.probe,
    output:
        f"{INTERVENTIONS}/steering/layer-{{layer}}.parquet",
    log:
        f"{OUT}/logs/steer_layer/{{predictor}}/layer-{{layer}}.log",
    benchmark:
        f"{OUT}/benchmarks/steer_layer/{{predictor}}/layer-{{layer}}.tsv"
    wildcard_constraints:
        layer="[0-9]+",
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=stage_mem_mb("steer_layer"),
        runtime=stage_runtime("steer_layer"),
        gpu=stage_gpu("steer_layer"),
    params:
        config=view(
            *PROVENANCE,
            "device",
            "metrics.bootstrap",
            "probes.max_iter",
            "interventions.from_position",
            "interventions.batch_size",
            "interventions.steering_windows_per_domain",
            "interventions.alphas",
        ),
        readout=lambda wildcards: pnconfig.steering_readout_layers(config, wildcards.layer),
        code=code_version("steer_layer"),
    script:
        "../scripts/steer_layer.py"


rule intervention_table:
    input:
        intervention_layer_tables,
    output:
        report(
            f"{INTERVENTIONS}/{{intervention}}.tsv",
            category="Interventions",
            caption="../report/intervention_table.rst",
            labels={"table": "{intervention}", "predictor": "{predictor}"},
        ),
    log:
        f"{OUT}/logs/intervention_table/{{predictor}}/{{intervention}}.log",
    benchmark:
        f"{OUT}/benchmarks/intervention_table/{{predictor}}/{{intervention}}.tsv"
    wildcard_constraints:
        intervention="patching|steering",
    conda:
        "../../envs/pndecomp.yaml"
    params:
        code=code_version("intervention_table"),
    script:
        "../scripts/intervention_table.py"


rule draw_interventions:
    input:
        f"{OUT}/interventions/{MAIN_PREDICTOR}/{{intervention}}.tsv",
    output:
        png=report(
            f"{OUT}/figures/{{intervention}}.png",
            category="Interventions",
            caption="../report/intervention_figure.rst",
        ),
        pdf=f"{OUT}/figures/{{intervention}}.pdf",
    log:
        f"{OUT}/logs/figures/{{intervention}}.log",
    benchmark:
        f"{OUT}/benchmarks/figures/{{intervention}}.tsv"
    wildcard_constraints:
        intervention="patching|steering",
    conda:
        "../../envs/pndecomp.yaml"
    params:
        config=view("figures"),
        code=code_version("draw_interventions"),
    script:
        "../scripts/draw_interventions.py"
