"""From the validated config dict to the objects each stage needs, plus the checks that a JSON
schema cannot express (they need the model's config or relations between keys).

Every error names the config key, the bad value and what would be valid, and is raised before
any expensive work.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from . import adapters, model_files, storage, tasks
from .config_schema import ConfigError
from .predictor_entries import predictor_names, with_predictor
from .predictor_kinds import OUTLIER_RULE_NORMALIZATIONS, predictor_kind, predictor_settings

if TYPE_CHECKING:  # Snakemake imports this module to build the DAG: torch is imported where a stage needs it
    import torch

    from .train import TrainConfig

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str) -> torch.dtype:
    """``torch.float32`` for ``"float32"``, and so on for :data:`DTYPE_NAMES`."""
    import torch

    if name not in DTYPE_NAMES:
        raise ConfigError(f"dtype {name!r} is not one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def layer_names(config: Mapping) -> list[str]:
    """Layers as the strings used in file names (``layer-7``, ``layer-embed``), in config order."""
    return [str(layer) for layer in config["layers"]]


def patching_layers(config: Mapping) -> list[str]:
    """The layers patching acts at, and steering may: every configured one but ``final`` (the final norm's
    output feeds only the LM head; patch the last block instead)."""
    return [name for name in layer_names(config) if name != "final"]


def steering_layers(config: Mapping) -> list[str]:
    """``interventions.steering_layers`` as layer names; null: the middle configured block layer when the
    domain probe task is configured (its windows define the directions), else none."""
    chosen = config["interventions"]["steering_layers"]
    if chosen is None:
        if "domain" not in config["probes"]["tasks"]:
            return []
        blocks = [name for name in patching_layers(config) if name.isdigit()]
        return blocks[len(blocks) // 2:][:1]
    return [str(layer) for layer in chosen]


def steering_readout_layers(config: Mapping, layer: str) -> list[str]:
    """Where the domain probe reads a state steered at ``layer``: there, and at the deepest configured block
    when that is deeper."""
    deepest = max((name for name in patching_layers(config) if name.isdigit()), key=int)
    return [layer] if int(deepest) <= int(layer) else [layer, deepest]


def check_interventions(config: Mapping) -> None:
    """Positions inside the window, steering at configured layers and with a domain task to read it."""
    section, length = config["interventions"], config["windows"]["length"]
    if section["from_position"] > length - 1:
        raise ConfigError(f"interventions.from_position is {section['from_position']}: with windows.length {length} "
                          f"it must be at most {length - 1} (a next token must follow the first patched position)")
    if section["patching_windows"] > config["windows"]["predictor_eval"]:
        raise ConfigError(f"interventions.patching_windows is {section['patching_windows']}, more than "
                          f"windows.predictor_eval ({config['windows']['predictor_eval']}): they are eval windows")
    valid = [name for name in patching_layers(config) if name.isdigit()]
    for layer in steering_layers(config):
        if layer not in valid:
            raise ConfigError(f"interventions.steering_layers: {layer!r} is not a configured block layer; steering "
                              f"acts at one of {valid} (not 'embed' or 'final')")
    if steering_layers(config) and "domain" not in config["probes"]["tasks"]:
        raise ConfigError(f"interventions.steering_layers is {config['interventions']['steering_layers']} but "
                          "probes.tasks has no 'domain': steering directions and their read-out come from the "
                          "domain probe's windows; add 'domain' to probes.tasks or set interventions.steering_layers: "
                          "null (no steering without it)")


def resolve_layers(layers, shape: model_files.ModelShape, model_id: str) -> list:
    """``layers`` with relative depths (floats in [0, 1], e.g. 0.5) turned into block indices
    round(depth × (n_blocks − 1)); block indices and named layers pass through."""
    resolved = [round(layer * (shape.n_blocks - 1)) if isinstance(layer, float) else layer for layer in layers]
    duplicates = sorted({str(layer) for layer in resolved if resolved.count(layer) > 1})
    if duplicates:
        raise ConfigError(f"layers: {list(layers)} resolve to the same block(s) {duplicates} of {model_id!r} "
                          f"({shape.n_blocks} blocks): give fewer or farther-apart depths")
    return resolved


def model_configs(config: Mapping) -> dict[str, dict]:
    """A model study's per-model configs (``models``): the shared config with that model's keys in the
    ``model`` section, its own ``layers`` if given, and results under ``<experiment>/<name>``."""
    configs = {}
    for name, spec in (config.get("models") or {}).items():
        spec = dict(spec)
        layers = spec.pop("layers", config["layers"])
        configs[name] = {**config, "model": {**config["model"], **spec}, "layers": layers,
                         "experiment": f"{config['experiment']}/{name}", "models": None}
    return configs


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} but torch finds no CUDA device; use 'auto' or 'cpu'")
    return torch.device(name)


def model_dtype(config: Mapping, device: torch.device) -> torch.dtype:
    name = config["model"]["dtype"]
    if name == "auto":
        name = "bfloat16" if device.type == "cuda" else "float32"
    return torch_dtype(name)


def storage_dtype(config: Mapping, choice_path: str | None) -> torch.dtype:
    """The dtype hidden states and residuals are stored in: ``extraction.dtype``, or for ``auto`` the
    choice the predictor_eval extraction recorded in ``choice_path`` (activations/storage_dtype.json,
    an input of every rule that needs the dtype when the config says auto)."""
    name = config["extraction"]["dtype"]
    if name != "auto":
        return torch_dtype(name)
    if choice_path is None:
        raise ConfigError("extraction.dtype is 'auto': the storage dtype is the predictor_eval extraction's choice, "
                          "recorded in activations/storage_dtype.json, and this stage was given no such file")
    return torch_dtype(storage.read_json(choice_path)["dtype"])


def predictor_config(config: Mapping, shape: model_files.ModelShape):
    """The settings dataclass of the configured predictor kind (``predictor.kind``: a name such as attn1 or
    mlp_k4), for this LM's widths."""
    section = config["predictor"]
    return predictor_settings(section["kind"], section, shape.d_model, shape.attention_width)


def train_keys(config: Mapping) -> tuple[str, ...]:
    """The config keys training reads besides the predictor's: ``train``, and the outlier rule's ratio
    only for a normalisation or ``train.outlier_rows`` setting that uses it (else changing it would retrain
    every predictor for nothing)."""
    uses_outliers = (config["train"]["normalize"] in OUTLIER_RULE_NORMALIZATIONS
                     or config["train"]["outlier_rows"] == "robust")
    return ("train", *(("metrics.outlier_norm_ratio",) if uses_outliers else ()))


def train_config(config: Mapping) -> TrainConfig:
    from .train import TrainConfig

    section = config["train"]
    outliers = {"outlier_norm_ratio": config["metrics"]["outlier_norm_ratio"]} \
        if "metrics.outlier_norm_ratio" in train_keys(config) else {}
    return TrainConfig(
        steps=section["steps"], batch_size=section["batch_size"], lr=section["lr"],
        weight_decay=section["weight_decay"], warmup_steps=section["warmup_steps"],
        min_lr_ratio=section["min_lr_ratio"], grad_clip=section["grad_clip"], eval_every=section["eval_every"],
        checkpoint_every=section["checkpoint_every"],
        seed=config["seed"] if section["seed"] is None else section["seed"], max_epochs=section["max_epochs"],
        normalize=section["normalize"], stop_patience=section["stop_patience"], stop_rel_tol=section["stop_rel_tol"],
        schedule=section["schedule"], lr_decay_factor=section["lr_decay_factor"],
        outlier_rows=section["outlier_rows"], compute_dtype=section["compute_dtype"], **outliers)


def probe_caps(config: Mapping) -> dict[str, dict[str, int]]:
    """{task: {probe split: windows}} for every configured task: its ``probes.caps`` entry, else the
    task's defaults; a control task has its base task's caps (it probes the base task's windows). Per
    class or in all, as the task's ``cap_kind`` says."""
    caps = config["probes"]["caps"]

    def caps_of(name: str) -> dict[str, int]:
        task = tasks.get(name)
        if task.control is not None:
            return caps_of(task.control.base)
        return dict(caps.get(name) or task.default_caps)

    return {name: caps_of(name) for name in config["probes"]["tasks"]}


def corpus_for_reading(config: Mapping, embedded_jsonl: str | None) -> dict:
    """The corpus section that :func:`pndecomp.corpus.iter_documents` reads.

    The embedded corpus is first built into a Pile-format JSON-lines file, then read like any
    local file, with its document ids and near-duplicate groups from its metadata.
    """
    corpus = dict(config["corpus"])
    if corpus["source"] == "embedded":
        corpus["source"] = "files"
        corpus["files"] = {"paths": [embedded_jsonl], "text_field": "text", "label_field": "meta.pile_set_name",
                           "id_field": "meta.doc_id", "group_field": "meta.group"}
    return corpus


def check(config: Mapping, shape: model_files.ModelShape | None = None) -> None:
    """Semantic checks; ``shape`` (from :func:`pndecomp.model_files.read_model_shape`) enables the model ones."""
    corpus = config["corpus"]
    if corpus["source"] == "files" and not corpus["files"]["paths"]:
        raise ConfigError("corpus.files.paths is empty: list at least one .jsonl, .jsonl.zst or .parquet file")
    if corpus["source"] == "files":
        from .corpus import iter_documents

        # Checks the paths now (unknown extension, clashing names: CorpusError), and each non-empty file's
        # first document (its text, label, id and group fields), so these fail before any job starts. A
        # missing file is left to Snakemake (the files are make_windows' inputs), an empty one to make_windows.
        iter_documents(corpus, require_files=False)
        for path in corpus["files"]["paths"]:
            if Path(path).is_file() and Path(path).stat().st_size:
                next(iter_documents({**corpus, "files": {**corpus["files"], "paths": [path]}, "max_documents": 1}))
    if corpus["source"] == "hf" and not corpus["hf"]["name"]:
        raise ConfigError("corpus.hf.name is not set: give a dataset id for corpus.source 'hf'")
    check_probes(config["probes"], corpus)
    for split, value in config["windows"]["split_fractions"].items():
        if value <= 0:
            raise ConfigError(f"windows.split_fractions.{split} is {value}: every split needs a positive share")
    check_train(config["train"], config["windows"], "train")
    for name in predictor_names(config):
        own = with_predictor(config, name)
        if own["train"] != {key: value for key, value in config["train"].items() if key != "seeds"}:
            check_train(own["train"], config["windows"], f"predictors.{name}.train")
        check_predictor(own["predictor"], own["train"])
    check_interventions(config)
    if shape is not None:
        check_model(config["model"]["id"], config["layers"], config["windows"]["length"], shape)


def check_train(train: Mapping, windows: Mapping, where: str) -> None:
    """A train section (the shared one, or one predictor's with its overrides; ``where`` names it) that
    training can run: whole positive step counts, a warm-up within them, joint layers only when streaming,
    the learning curve's windows within predictor_val."""
    for key in ("steps", "warmup_steps", "eval_every", "checkpoint_every"):
        value = train[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "warmup_steps" else 1):
            raise ConfigError(f"{where}.{key} is {value!r}: it must be a whole number, at least "
                              f"{0 if key == 'warmup_steps' else 1}")
    if train["warmup_steps"] > train["steps"]:
        raise ConfigError(f"{where}.warmup_steps is {train['warmup_steps']}, more than {where}.steps "
                          f"({train['steps']}): it must be at most the steps")
    if train["schedule"] == "plateau" and train["stop_patience"] is None:
        raise ConfigError(f"{where}.schedule is 'plateau' with {where}.stop_patience null: the plateau schedule lowers "
                          "the learning rate at each validation plateau, which stop_patience defines; set "
                          f"{where}.stop_patience (e.g. 4) or {where}.schedule: cosine")
    if train["outlier_rows"] == "robust" and train["normalize"] == "none":
        raise ConfigError(f"{where}.outlier_rows is 'robust' with {where}.normalize 'none': the outlier limit is a "
                          f"norm in the normalised space; set {where}.normalize (robust_rms, the default) or "
                          f"{where}.outlier_rows: keep")
    if train["joint_layers"] and train["data"] != "stream":
        raise ConfigError(f"{where}.joint_layers is true with train.data {train['data']!r}: one LM pass serves every "
                          "layer only in stream mode; set train.data: stream or train.joint_layers: false")
    if train["eval_windows"] > windows["predictor_val"]:
        raise ConfigError(f"{where}.eval_windows is {train['eval_windows']}, more than windows.predictor_val "
                          f"({windows['predictor_val']}): the learning curve's windows are taken from them")


def check_predictor(section: Mapping, train: Mapping) -> None:
    """A known predictor name, an even head size for rotary attention, cache mode for closed-form kinds."""
    name = section["kind"]
    try:
        kind = predictor_kind(name)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    rotary = section["rotary"] or name == "attn1_rope"
    if rotary and name.startswith("attn") and section["d_head"] % 2:
        raise ConfigError(f"predictor.d_head is {section['d_head']}: rotary embeddings need an even head size")
    if kind.closed_form and train["data"] != "cache":
        raise ConfigError(f"predictor.kind is {name!r} with train.data {train['data']!r}: ridge_ar predictors need "
                          "train.data: cache (they are fitted in closed form on the cached activations)")


def check_probes(probes: Mapping, corpus: Mapping) -> None:
    """Every task registered, caps only for configured tasks, a label field for tasks that read it."""
    for name in probes["tasks"]:
        if name not in tasks.TASKS:
            raise ConfigError(f"probes.tasks: unknown task {name!r}; known tasks are {sorted(tasks.TASKS)} "
                              "(add one in src/pndecomp/tasks.py)")
    for name in probes["tasks"]:
        control = tasks.get(name).control
        if control is not None and control.base not in probes["tasks"]:
            raise ConfigError(f"probes.tasks includes the control task {name!r} without its base task "
                              f"{control.base!r}: a control probes its base task's windows, so add {control.base!r}")
    for name in probes["caps"]:
        if name not in probes["tasks"]:
            raise ConfigError(f"probes.caps.{name}: {name!r} is not in probes.tasks {list(probes['tasks'])}: "
                              "give caps only for configured tasks")
        control = tasks.get(name).control
        if control is not None:
            raise ConfigError(f"probes.caps.{name}: a control task probes its base task's windows; set "
                              f"probes.caps.{control.base} instead")
    for name in probes["tasks"]:
        if tasks.get(name).needs_document_label and corpus["source"] != "embedded":
            if not corpus[corpus["source"]]["label_field"]:
                raise ConfigError(f"probes.tasks includes {name!r} but corpus.{corpus['source']}.label_field "
                                  "is null: set the label field (e.g. meta.pile_set_name) or drop the task")


def check_model(model_id: str, layers, window_length: int, shape: model_files.ModelShape) -> None:
    """Layers within the model's blocks and windows within its context."""
    for layer in layers:
        if layer not in model_files.NAMED_LAYERS and not 0 <= int(layer) < shape.n_blocks:
            raise ConfigError(f"layers: {layer} is out of range for {model_id!r}, which has "
                              f"{shape.n_blocks} blocks: valid are 0..{shape.n_blocks - 1}, 'embed' and 'final'")
    if shape.context_length is not None and window_length > shape.context_length:
        raise ConfigError(f"windows.length is {window_length}, longer than the context of {model_id!r} "
                          f"({shape.context_length} tokens)")


def model_shape(config: Mapping, materialized_dir: str | None = None) -> model_files.ModelShape:
    """The model's shape for :func:`check`, read when Snakemake builds the DAG, after checking that the
    weights every LM job loads are there: a hub model not downloaded yet raises
    :class:`~pndecomp.model_files.ModelNotDownloaded`, which names the download command.

    A materialized copy is read when it exists: its config.json is faster to read than a GGUF header.
    """
    if materialized_dir and (Path(materialized_dir) / "config.json").is_file():
        return model_files.read_model_shape(model_files.ModelSource(str(materialized_dir)))
    source = model_files.resolve_source(config["model"])
    try:
        shape = model_files.read_model_shape(source)
    except adapters.UnknownModelType as error:
        raise ConfigError(f"model.id: {config['model']['id']!r}: {error}") from error
    if not source.gguf_file:
        model_files.weights_file(model_files.model_directory(source))
    return shape


def config_view(config: Mapping, *keys: str) -> dict:
    """The part of the config one rule reads: the named keys, dotted for a key inside a section.

    Rules pass this as a param, so Snakemake reruns a rule exactly when something it reads changes,
    and a script that reads beyond its view fails loudly in tests instead of missing a rerun.
    """
    view: dict = {}
    for key in keys:
        section, _, sub = key.partition(".")
        if sub:
            view.setdefault(section, {})[sub] = config[section][sub]
        else:
            view[section] = config[section]
    return view


def relative_depths(config: Mapping) -> dict[str, float]:
    """Each configured layer's relative depth in its model: block b of n is b / (n − 1); 'final' (after
    the final norm) is 1; 'embed' is one block before block 0, −1 / (n − 1)."""
    model_dir = Path("results") / config["experiment"] / "model"
    shape = model_shape(config, str(model_dir))
    last = max(shape.n_blocks - 1, 1)
    named = {"embed": -1 / last, "final": 1.0}
    layers = resolve_layers(config["layers"], shape, config["model"]["id"])
    return {str(layer): named[layer] if layer in named else int(layer) / last for layer in layers}
