import functools


from pndecomp import config as pnconfig
from pndecomp import config_schema as pnschema
from pndecomp import predictor_entries as pnentries
from pndecomp import registry as pnregistry
from pndecomp import resources as pnresources
from pndecomp import tasks as pntasks
from pndecomp.overrides import load_schema

# --config KEY=VALUE strings typed by the schema, its defaults filled in, every violation named by its key path.
pnschema.check(config, load_schema(workflow.source_path("../schemas/config.schema.yaml")))

OUT = f"results/{config['experiment']}"
# GGUF weights (the embedded default among them) are dequantized once into a model directory.
MATERIALIZE_MODEL = config["model"]["id"] == "embedded" or config["model"]["id"].endswith(".gguf")
MODEL_DIR = f"{OUT}/model"
TOKENIZER_DIR = f"{OUT}/tokenizer"

# Every semantic check runs here, before any job starts; relative depths become block indices first.
# A hub model not in the local hub cache fails here, naming the command that downloads it.
MODEL_SHAPE = pnconfig.model_shape(config, MODEL_DIR if MATERIALIZE_MODEL else None)
config["layers"] = pnconfig.resolve_layers(config["layers"], MODEL_SHAPE, config["model"]["id"])
if config["interventions"]["steering_layers"] is not None:
    config["interventions"]["steering_layers"] = pnconfig.resolve_layers(
        config["interventions"]["steering_layers"], MODEL_SHAPE, config["model"]["id"]
    )
pnconfig.check(config, MODEL_SHAPE)

LAYERS = pnconfig.layer_names(config)
# Every predictor gets its own paths (predictors/<name>/, residuals/<name>/, metrics/<name>/,
# probes/<name>/); figures 1-6 are drawn for the first.
PREDICTORS = pnentries.predictor_names(config)
# Each entry's registry kind (a budget entry names the kind it trains; ridge_ar4 is also a baseline).
PREDICTOR_KINDS = {name: pnentries.with_predictor(config, name)["predictor"]["kind"] for name in PREDICTORS}
MAIN_PREDICTOR = PREDICTORS[0]
TASKS = config["probes"]["tasks"]
# Base tasks carry the claims scorecard's probe claims (their control tasks give selectivity in the base table).
CLAIM_TASKS = [task for task in TASKS if pnregistry.TASKS[task].control is None]
# A budget study's entries ({predictor: train.steps}; {} otherwise) and the probe gaps it follows
# (pndecomp.compare.BUDGET_GAPS), where configured.
BUDGETS = pnentries.training_budgets(config)
BUDGET_TASKS = [task for task in ("domain", "next_token_type_8") if task in TASKS]
# Where one predictor's outputs live ({predictor} and {layer} stay wildcards).
PREDICTOR_DIR = f"{OUT}/predictors/{{predictor}}/layer-{{layer}}"
RESIDUALS = f"{OUT}/residuals/{{predictor}}"
METRICS = f"{OUT}/metrics/{{predictor}}"
PROBES = f"{OUT}/probes/{{predictor}}"
INTERVENTIONS = f"{OUT}/interventions/{{predictor}}"
# Interventions act at every configured layer but `final`; steering at interventions.steering_layers.
PATCHING_LAYERS = pnconfig.patching_layers(config)
STEERING_LAYERS = pnconfig.steering_layers(config)

# What output_metadata records in every output it writes: rules that write metadata read these.
PROVENANCE = ("experiment", "seed", "model")
# File stem of each figure -> what draws it: figures 1-4 from pndecomp.figures, one heatmap per task.
FIGURES = pnregistry.FIGURES
HEATMAPS = {pnregistry.TASKS[task].figure: task for task in TASKS}


wildcard_constraints:
    layer="embed|final|[0-9]+",
    task="|".join(TASKS) or "none",
    predictor="|".join(PREDICTORS),


localrules:
    all,
    pipeline,
    probe_table,
    layer_summary,
    draw_learning_curve,
    draw_per_position,
    draw_layer_scores,
    draw_probe_heatmap,
    predictor_comparison,
    draw_predictor_comparison,
    budget_comparison,
    draw_budget_comparison,
    intervention_table,
    draw_interventions,
    claims,


def model_input():
    """The materialized model directory, for rules that load the LM."""
    return [MODEL_DIR] if MATERIALIZE_MODEL else []


def tokenizer_input():
    """The materialized tokenizer directory, for rules that need only the tokenizer (they need not
    wait for the weights)."""
    return [TOKENIZER_DIR] if MATERIALIZE_MODEL else []


def corpus_files():
    """The configured corpus files (source ``files``), as inputs of make_windows: a file changed in
    place reruns the windows and everything downstream, and Snakemake reports a missing one."""
    corpus = config["corpus"]
    return list(corpus["files"]["paths"]) if corpus["source"] == "files" else []


def train_data():
    """What the baselines fit on: the layer's extracted activations, or in stream mode the predictor_train
    windows (the LM computes their states)."""
    if config["train"]["data"] == "stream":
        return f"{OUT}/windows/predictor_train.parquet"
    return f"{OUT}/activations/predictor_train/layer-{{layer}}.safetensors"


def predictor_training_data():
    """What a predictor trains on: the layer's extracted activations, or in stream mode the token store of
    the predictor_train documents (every step draws its windows from all of them)."""
    if config["train"]["data"] == "stream":
        return rules.make_windows.output.predictor_train_tokens
    return f"{OUT}/activations/predictor_train/layer-{{layer}}.safetensors"


def storage_dtype_choice():
    """With extraction.dtype auto, the predictor_eval extraction chooses the storage dtype and records it
    in this file: an output of that rule, an input of every rule that stores or rounds through the dtype.
    An explicit dtype needs no file: then an empty dict, to unpack into input or output."""
    if config["extraction"]["dtype"] != "auto":
        return {}
    return {"storage_dtype": f"{OUT}/activations/storage_dtype.json"}


@functools.cache
def resource_requests(predictor=None):
    """{rule: mem_mb and runtime (minutes)} of every rule that runs as a job, from the config's sizes and the
    model's shape (pndecomp.resources); with a predictor, its rules' requests are that predictor's."""
    return pnresources.requests(config, MODEL_SHAPE, MODEL_DIR if MATERIALIZE_MODEL else None, predictor)


def stage_request(rule_name, field):
    """The rule's request (a number), computed once when Snakemake builds the DAG; for a rule that runs one
    predictor, a function of the job's wildcards: each predictor's jobs ask for what that predictor needs."""
    if pnregistry.RULES[rule_name].per_predictor:
        return lambda wildcards: getattr(resource_requests(wildcards.predictor)[rule_name], field)
    return getattr(resource_requests()[rule_name], field)


def stage_mem_mb(rule):
    """The rule's memory request in MB."""
    return stage_request(rule, "mem_mb")


def stage_runtime(rule):
    """The rule's time request in minutes."""
    return stage_request(rule, "runtime")


def stage_gpu(rule):
    """1 for the stages that run the LM or a predictor (pndecomp.registry.RULES), else 0. Run with
    `--resources gpu=1`, one GPU job runs at a time while the CPU jobs share the cores."""
    return int(pnregistry.RULES[rule].gpu)


def view(*keys):
    """The config a rule's script reads (see pndecomp.config.config_view); a param, so changes rerun it."""
    return pnconfig.config_view(config, *keys)


def predictor_view(*keys):
    """As :func:`view`, for rules with a ``{predictor}`` wildcard; their ``predictor`` section is that
    predictor's own, so adding or changing one predictor reruns only its jobs."""
    return lambda wildcards: pnconfig.config_view(pnentries.with_predictor(config, wildcards.predictor), *keys)


def per_layer(pattern, prefix=""):
    """``pattern`` with its ``{layer}`` field filled, keyed by ``prefix`` + layer, for every configured
    layer in order.

    Other wildcards in the pattern (``{task}``) stay wildcards.
    """
    return {f"{prefix}{layer}": pattern.replace("{layer}", layer) for layer in LAYERS}


def probe_features_lm_input():
    """What probe_features reads besides its predictors: the probe windows' stored states (named
    states_<layer>) with probes.shared_states, else the LM, which it runs itself."""
    if config["probes"]["shared_states"]:
        return per_layer(f"{OUT}/activations/probe/layer-{{layer}}.safetensors", prefix="states_")
    return {"model": model_input()}


def probe_table_input(wildcards):
    """Per-layer probe tables and paired differences of the task, and of its control task when one is
    configured (for ``selectivity``), as lists in config layer order."""
    inputs = {
        "scores": expand(f"{PROBES}/{wildcards.task}/layer-{{layer}}.parquet", layer=LAYERS, **wildcards),
        "differences": expand(
            f"{PROBES}/{wildcards.task}/layer-{{layer}}_differences.parquet", layer=LAYERS, **wildcards
        ),
    }
    control = pntasks.control_for(wildcards.task, TASKS)
    if control is not None:
        inputs["control"] = expand(f"{PROBES}/{control}/layer-{{layer}}.parquet", layer=LAYERS, **wildcards)
    return inputs


def figures_of(kind):
    """The figure stems a drawing rule makes, as a wildcard pattern."""
    names = [name for name, figure in FIGURES.items() if figure.kind == kind]
    return "|".join(names)


def figure_targets():
    names = [*FIGURES, *HEATMAPS]
    return [f"{OUT}/figures/{name}.{ext}" for name in names for ext in ("png", "pdf")]


def interventions_of():
    """The intervention tables (and figures) the config asks for: patching, and steering when it has layers."""
    if not config["interventions"]["enabled"]:
        return []
    return ["patching", "steering"] if STEERING_LAYERS else ["patching"]


def intervention_layer_tables(wildcards):
    """The per-layer tables of one predictor's patching or steering, in config order."""
    layers = PATCHING_LAYERS if wildcards.intervention == "patching" else STEERING_LAYERS
    return expand(f"{INTERVENTIONS}/{wildcards.intervention}/layer-{{layer}}.parquet", layer=layers, **wildcards)


def steering_features(wildcards):
    """The probe features a steering job reads: the steered layer's (its directions and probe) and the
    deepest configured block's (the probe that reads the steered state there), keyed features_<layer>."""
    return {
        f"features_{layer}": f"{OUT}/probe_features/{wildcards.predictor}/layer-{layer}.safetensors"
        for layer in pnconfig.steering_readout_layers(config, wildcards.layer)
    }


def all_targets():
    targets = [rules.resolved_config.output[0], f"{OUT}/claims.tsv", *figure_targets()]
    for predictor in PREDICTORS:
        targets.append(f"{OUT}/metrics/{predictor}/layer_summary.tsv")
        targets.extend(f"{OUT}/probes/{predictor}/{task}.tsv" for task in TASKS)
        targets.extend(f"{OUT}/interventions/{predictor}/{kind}.tsv" for kind in interventions_of())
    targets.extend(f"{OUT}/figures/{kind}.{ext}" for kind in interventions_of() for ext in ("png", "pdf"))
    if len(PREDICTORS) > 1:
        targets += [f"{OUT}/metrics/predictor_comparison.tsv", f"{OUT}/figures/predictor_comparison.png"]
    if BUDGETS:
        targets += [f"{OUT}/metrics/budget_comparison.tsv", f"{OUT}/figures/budget_comparison.png"]
    if config["train"]["seeds"]:
        targets.append(f"{OUT}/seed_claims.tsv")
    targets.extend(f"{OUT}/inspect/{name}.html" for name in config["inspect"]["texts"])
    return targets


def claims_patterns():
    """Where each table the scorecard reads lives ({predictor}, {layer}, {task} left as fields)."""
    patterns = {
        "summary": f"{METRICS}/layer_summary.tsv",
        "per_position": f"{METRICS}/per_position/layer-{{layer}}.parquet",
        "probes": f"{PROBES}/{{task}}.tsv",
        "differences": f"{PROBES}/{{task}}_differences.tsv",
        # the weights' metadata: did each layer's training stop by its plateau (converged)?
        "weights": f"{PREDICTOR_DIR}/predictor.safetensors",
    }
    if config["interventions"]["enabled"]:
        patterns["patching"] = f"{INTERVENTIONS}/patching.tsv"
    return patterns
