# The per-token page of each text named in inspect.texts (pndecomp.decompose): ‖r‖/‖h‖ of the first predictor
# (MAIN_PREDICTOR) at every configured layer and the LM's surprisal, token by token, in one self-contained HTML
# file. Its params hold its own text alone, so adding or changing one text reruns that page only.

import re


rule inspect_text:
    input:
        **per_layer(f"{OUT}/predictors/{MAIN_PREDICTOR}/layer-{{layer}}/predictor.safetensors"),
        **storage_dtype_choice(),
        model=model_input(),
        tokenizer=tokenizer_input(),
    output:
        html=report(
            f"{OUT}/inspect/{{name}}.html",
            category="Decomposed texts",
            caption="../report/inspect.rst",
            labels={"text": "{name}"},
        ),
    log:
        f"{OUT}/logs/inspect_text/{{name}}.log",
    benchmark:
        f"{OUT}/benchmarks/inspect_text/{{name}}.tsv"
    wildcard_constraints:
        name="|".join(map(re.escape, config["inspect"]["texts"])) or "none",
    conda:
        "../../envs/pndecomp.yaml"
    threads: 1
    resources:
        mem_mb=stage_mem_mb("inspect_text"),
        runtime=stage_runtime("inspect_text"),
        gpu=stage_gpu("inspect_text"),
    params:
        config=view(*PROVENANCE, "device", "layers", "extraction", "windows.prepend_bos"),
        text=lambda wildcards: config["inspect"]["texts"][wildcards.name],
        predictor=MAIN_PREDICTOR,
        code=code_version("inspect_text"),
    script:
        "../scripts/inspect_text.py"
