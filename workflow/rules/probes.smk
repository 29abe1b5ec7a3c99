rule fit_probe:
    input:
        windows=rules.make_windows.output.probe,
        features=f"{OUT}/probe_features/layer-{{layer}}.safetensors",
    output:
        f"{OUT}/probes/{{task}}/layer-{{layer}}.parquet",
    log:
        f"{OUT}/logs/fit_probe/{{task}}/layer-{{layer}}.log",
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        config=view(*PROVENANCE, "probes.c_grid", "probes.max_iter"),
    script:
        "../scripts/fit_probe.py"


rule probe_table:
    input:
        **per_layer(f"{OUT}/probes/{{task}}/layer-{{layer}}.parquet"),
    output:
        report(f"{OUT}/probes/{{task}}.tsv", category="Tables", caption="../report/probe_table.rst"),
    log:
        f"{OUT}/logs/probe_table/{{task}}.log",
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    script:
        "../scripts/probe_table.py"
