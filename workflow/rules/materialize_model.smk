rule materialize_model:
    output:
        directory(MODEL_DIR),
    log:
        f"{OUT}/logs/materialize_model.log",
    benchmark:
        f"{OUT}/benchmarks/materialize_model.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=stage_mem_mb("materialize_model"),
        runtime=stage_runtime("materialize_model"),
    params:
        config=view("model"),
        code=code_version("materialize_model"),
    script:
        "../scripts/materialize_model.py"


rule materialize_tokenizer:
    output:
        directory(TOKENIZER_DIR),
    log:
        f"{OUT}/logs/materialize_tokenizer.log",
    benchmark:
        f"{OUT}/benchmarks/materialize_tokenizer.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=stage_mem_mb("materialize_tokenizer"),
        runtime=stage_runtime("materialize_tokenizer"),
    params:
        config=view("model"),
        code=code_version("materialize_tokenizer"),
    script:
        "../scripts/materialize_tokenizer.py"
