rule materialize_model:
    output:
        directory(MODEL_DIR),
    log:
        f"{OUT}/logs/materialize_model.log",
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        config=view("model"),
    script:
        "../scripts/materialize_model.py"
