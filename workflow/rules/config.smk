# The experiment's record (pndecomp.config_files): results/<experiment>/config.yaml holds the resolved config
# of the run that made them. Included by pipeline.smk (each model of a study too, under <experiment>/<model>)
# and by model_study.smk (the study's own record).

from pndecomp import config_files

# Results of one experiment come from one model, corpus and layer set: stop before any work when the
# record says otherwise. Other keys may change; the rules that read them rerun.
config_files.check_experiment(config)


rule resolved_config:
    output:
        str(config_files.resolved_path(config["experiment"])),
    log:
        f"results/{config['experiment']}/logs/resolved_config.log",
    # localrule, not the localrules directive: in a model study's module this rule's name gets a prefix
    localrule: True
    conda:
        "../../envs/pndecomp.yaml"
    params:
        # the whole config: any change rewrites the record
        config=config,
        code=code_version("resolved_config"),
    script:
        "../scripts/resolved_config.py"
