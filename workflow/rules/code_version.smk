# Snakemake reruns a job when its rule's script changes, not when the pndecomp modules that the script calls
# do; every rule therefore passes code_version(<its script>) as a param, and a changed param reruns the job.
# Included by pipeline.smk and by model_study.smk (whose comparison rules run outside the per-model modules).

from pndecomp import code_version as pncode


def code_version(script):
    """A fingerprint of the source of every pndecomp module that workflow/scripts/<script>.py imports,
    directly or through other modules (pndecomp.code_version): changing one reruns the jobs of the rules
    whose scripts import it, and only those."""
    return pncode.script_fingerprint(str(workflow.source_path(f"../scripts/{script}.py")))
