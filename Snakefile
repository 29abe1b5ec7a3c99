# pndecomp: split a frozen LM's hidden states into a predictable and a novel component.
# One model: workflow/pipeline.smk. A model study (config `models:`): the pipeline once per model, under
# results/<experiment>/<model>/, plus the comparison across models (workflow/rules/model_study.smk).

from snakemake.utils import min_version

min_version("9.0")


# The front page of `snakemake --report`: what the workflow does and how to read the report.
report: "workflow/report/workflow.rst"


from pndecomp import config_files

# The config (pndecomp.config_files): the --configfile files, each on the schema's defaults plus what it
# `extends:`, or without any the embedded default, config.yaml; --config on top. (Snakemake's configfile
# directive would merge every --configfile over config.yaml.)
COMPOSED_CONFIG, CONFIG_FILES = config_files.compose(workflow.overwrite_configfiles, workflow.config_settings.config)
config.clear()
config.update(COMPOSED_CONFIG)
# listed in the report, as the directive lists the files it reads
workflow.configfiles.extend(path for path in CONFIG_FILES if path not in workflow.configfiles)


if config.get("models"):

    include: "workflow/rules/model_study.smk"

else:

    include: "workflow/pipeline.smk"


rule all:
    default_target: True
    input:
        ALL_TARGETS,
