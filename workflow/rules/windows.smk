rule make_windows:
    input:
        tokenizer=tokenizer_input(),
        corpus=[rules.embedded_corpus.output.documents] if config["corpus"]["source"] == "embedded" else [],
        corpus_files=corpus_files(),
    output:
        predictor_train=f"{OUT}/windows/predictor_train.parquet",
        # every predictor_train document's token ids: stream-mode training draws its windows from them
        predictor_train_tokens=directory(f"{OUT}/windows/predictor_train_tokens"),
        predictor_val=f"{OUT}/windows/predictor_val.parquet",
        predictor_eval=f"{OUT}/windows/predictor_eval.parquet",
        probe=f"{OUT}/windows/probe.parquet",
        summary=f"{OUT}/windows/summary.json",
    log:
        f"{OUT}/logs/make_windows.log",
    benchmark:
        f"{OUT}/benchmarks/make_windows.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=stage_mem_mb("make_windows"),
        runtime=stage_runtime("make_windows"),
    params:
        config=view(*PROVENANCE, "corpus", "windows", "probes.tasks", "probes.caps"),
        code=code_version("make_windows"),
    script:
        "../scripts/make_windows.py"
