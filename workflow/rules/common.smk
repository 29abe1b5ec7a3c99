
from snakemake.logging import logger
from snakemake.utils import validate


from pndecomp import config as pnconfig


validate(config, "../schemas/config.schema.yaml")

OUT = f"results/{config['experiment']}"
LAYERS = pnconfig.layer_names(config)
TASKS = config["probes"]["tasks"]
# GGUF weights (the embedded default among them) are dequantized once into a model directory.
MATERIALIZE_MODEL = config["model"]["id"] == "embedded" or config["model"]["id"].endswith(".gguf")
MODEL_DIR = f"{OUT}/model"

# Every semantic check runs here, before any job starts.
MODEL_SHAPE, MODEL_SHAPE_NOTE = pnconfig.model_shape(config, MODEL_DIR if MATERIALIZE_MODEL else None)
if MODEL_SHAPE_NOTE:
    logger.warning(MODEL_SHAPE_NOTE)
pnconfig.check(config, MODEL_SHAPE)


wildcard_constraints:
    layer="embed|[0-9]+",
    task="|".join(TASKS) or "none",


localrules:
    all,
    probe_table,
    layer_summary,
    fig1_mse_curve,
    fig2_r2_curve,
    fig3_position_mse,
    fig4_position_spearman,
    fig5_domain_probe,
    fig6_token_type_probe,


def model_input():
    """The materialized model directory, for rules that load the LM or its tokenizer."""
    return [MODEL_DIR] if MATERIALIZE_MODEL else []


def train_data():
    """Cache mode trains on the layer's extracted activations; stream mode on the windows themselves."""
    if config["train"]["data"] == "stream":
        return f"{OUT}/windows/predictor_train.parquet"
    return f"{OUT}/activations/predictor_train/layer-{{layer}}.safetensors"


def view(*keys):
    """The config a rule's script reads (see pndecomp.config.config_view); a param, so changes rerun it."""
    return pnconfig.config_view(config, *keys)


def per_layer(pattern):
    """``pattern`` with its ``{layer}`` field filled, keyed by layer, for every configured layer in order.

    Other wildcards in the pattern (``{task}``) stay wildcards.
    """
    return {layer: pattern.replace("{layer}", layer) for layer in LAYERS}


def figure_targets():
    figures = ["fig1", "fig2", "fig3", "fig4"]
    figures += ["fig5"] if "domain" in TASKS else []
    figures += ["fig6"] if "next_token_type_8" in TASKS else []
    return [f"{OUT}/figures/{name}.{ext}" for name in figures for ext in ("png", "pdf")]


def all_targets():
    return [
        *figure_targets(),
        f"{OUT}/metrics/layer_summary.tsv",
        *[f"{OUT}/probes/{task}.tsv" for task in TASKS],
    ]
