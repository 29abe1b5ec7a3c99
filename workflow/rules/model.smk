rule materialize_model:
    output:
        directory(MODEL_DIR),
    params:
        config=view(),
    log:
        f"{OUT}/logs/materialize_model.log",
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    script:
        "../scripts/materialize_model.py"
