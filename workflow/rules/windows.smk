rule make_windows:
    input:
        model=model_input(),
        corpus=[rules.embedded_corpus.output.documents] if config["corpus"]["source"] == "embedded" else [],
    output:
        predictor_train=f"{OUT}/windows/predictor_train.parquet",
        predictor_eval=f"{OUT}/windows/predictor_eval.parquet",
        probe=f"{OUT}/windows/probe.parquet",
        summary=f"{OUT}/windows/summary.json",
    params:
        config=view("corpus", "windows", "probes.tasks", "probes.domain_caps", "probes.token_type_caps"),
    log:
        f"{OUT}/logs/make_windows.log",
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../scripts/make_windows.py"
