rule embedded_corpus:
    output:
        documents=f"{OUT}/corpus/documents.jsonl",
        manifest=f"{OUT}/corpus/manifest.tsv",
    log:
        f"{OUT}/logs/embedded_corpus.log",
    benchmark:
        f"{OUT}/benchmarks/embedded_corpus.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=stage_mem_mb("embedded_corpus"),
        runtime=stage_runtime("embedded_corpus"),
    params:
        config=view("corpus.embedded"),
        code=code_version("embedded_corpus"),
    script:
        "../scripts/embedded_corpus.py"
