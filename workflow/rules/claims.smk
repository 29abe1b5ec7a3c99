# The claims scorecard (pndecomp.claims): the paper's findings and the project's controls, each with a
# verdict from the run's own tables. First in the report.


rule claims:
    input:
        [
            expand(pattern, predictor=PREDICTORS, layer=LAYERS, task=CLAIM_TASKS)
            for pattern in claims_patterns().values()
        ],
    output:
        report(
            f"{OUT}/claims.tsv",
            category="Claims",
            caption="../report/claims.rst",
            labels={"table": "claims scorecard"},
        ),
    log:
        f"{OUT}/logs/claims.log",
    benchmark:
        f"{OUT}/benchmarks/claims.tsv"
    conda:
        "../../envs/pndecomp.yaml"
    params:
        predictors=PREDICTOR_KINDS,
        layers=LAYERS,
        tasks=CLAIM_TASKS,
        # patterns, not paths: a function keeps Snakemake from filling their fields as wildcards
        patterns=lambda wildcards: claims_patterns(),
        missing={} if config["interventions"]["enabled"] else {"patching": "interventions.enabled is false"},
        code=code_version("claims"),
    script:
        "../scripts/claims.py"


# With train.seeds: the scorecard across each entry's seeds (pndecomp.robustness.across_seeds).
rule seed_claims:
    input:
        rules.claims.output[0],
    output:
        report(
            f"{OUT}/seed_claims.tsv",
            category="Claims",
            caption="../report/seed_claims.rst",
            labels={"table": "claims across training seeds"},
        ),
    log:
        f"{OUT}/logs/seed_claims.log",
    benchmark:
        f"{OUT}/benchmarks/seed_claims.tsv"
    localrule: True
    conda:
        "../../envs/pndecomp.yaml"
    params:
        seeds=pnentries.entry_seeds(config),
        code=code_version("seed_claims"),
    script:
        "../scripts/seed_claims.py"
