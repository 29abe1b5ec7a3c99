rule fit_probe:
    input:
        windows=rules.make_windows.output.probe,
        features=f"{OUT}/probe_features/layer-{{layer}}.safetensors",
    output:
        scores=f"{OUT}/probes/{{task}}/layer-{{layer}}.parquet",
        differences=f"{OUT}/probes/{{task}}/layer-{{layer}}_differences.parquet",
    log:
        f"{OUT}/logs/fit_probe/{{task}}/layer-{{layer}}.log",
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
    script:
        "../scripts/fit_probe.py"


rule probe_table:
    input:
        unpack(probe_table_input),
    output:
        table=report(f"{OUT}/probes/{{task}}.tsv", category="Tables", caption="../report/probe_table.rst"),
        differences=report(
            f"{OUT}/probes/{{task}}_differences.tsv",
            category="Tables",
            caption="../report/probe_differences.rst",
        ),
    log:
        f"{OUT}/logs/probe_table/{{task}}.log",
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    params:
        layers=LAYERS,
    script:
        "../scripts/probe_table.py"
