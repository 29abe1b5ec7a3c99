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


rule materialize_tokenizer:
    output:
        directory(TOKENIZER_DIR),
    log:
        f"{OUT}/logs/materialize_tokenizer.log",
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        config=view("model"),
    script:
        "../scripts/materialize_tokenizer.py"
