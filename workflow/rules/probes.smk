rule fit_probe:
    input:
        windows=rules.make_windows.output.probe,
        features=f"{OUT}/probe_features/{{predictor}}/layer-{{layer}}.safetensors",
    output:
        scores=f"{PROBES}/{{task}}/layer-{{layer}}.parquet",
        differences=f"{PROBES}/{{task}}/layer-{{layer}}_differences.parquet",
    log:
        f"{OUT}/logs/fit_probe/{{predictor}}/{{task}}/layer-{{layer}}.log",
    benchmark:
        f"{OUT}/benchmarks/fit_probe/{{predictor}}/{{task}}/layer-{{layer}}.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=stage_mem_mb("fit_probe"),
        runtime=stage_runtime("fit_probe"),
    params:
        config=view(
            *PROVENANCE,
            "probes.c_grid",
            "probes.max_iter",
            "probes.min_test_per_class",
            "metrics.bootstrap",
        ),
        code=code_version("fit_probe"),
    script:
        "../scripts/fit_probe.py"


rule probe_table:
    input:
        unpack(probe_table_input),
    output:
        table=report(
            f"{PROBES}/{{task}}.tsv",
            category="Tables",
            caption="../report/probe_table.rst",
            labels={"table": "{task}", "predictor": "{predictor}"},
        ),
        differences=report(
            f"{PROBES}/{{task}}_differences.tsv",
            category="Tables",
            caption="../report/probe_differences.rst",
            labels={"table": "{task} differences", "predictor": "{predictor}"},
        ),
    log:
        f"{OUT}/logs/probe_table/{{predictor}}/{{task}}.log",
    benchmark:
        f"{OUT}/benchmarks/probe_table/{{predictor}}/{{task}}.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    params:
        layers=LAYERS,
        code=code_version("probe_table"),
    script:
        "../scripts/probe_table.py"
