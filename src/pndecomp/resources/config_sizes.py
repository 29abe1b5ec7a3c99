"""From a validated config and the model's shape to :class:`~pndecomp.resources.rules.Sizes`, and from
them to every rule's estimate and request (:mod:`pndecomp.resources`)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from .. import config as pnconfig
from .. import model_files, tasks
from .. import predictor_entries as pnentries
from ..predictor_kinds import predictor_kind
from .constants import ASSUMED_CLASSES, ASSUMED_DOCUMENTS, ASSUMED_VOCAB, ZSTD_RATIO
from .estimate import Estimate, Request, Sizes
from .rules import STAGES


def probe_windows(config: Mapping) -> tuple[int, int]:
    """(probe windows, the largest task's windows), upper bounds from the caps: per-class caps × the
    assumed number of classes, summed over the splits; the union over tasks at most their sum."""
    per_task = {}
    for name, caps in pnconfig.probe_caps(config).items():
        task = tasks.get(name)
        classes = ASSUMED_CLASSES if task.cap_kind == "per_class" else 1
        per_task[name] = sum(caps.values()) * classes
    bases = [n for name, n in per_task.items() if tasks.get(name).control is None]
    return sum(bases), max(per_task.values(), default=0)


def model_extras(config: Mapping, materialized_dir: str | None = None) -> dict[str, int]:
    """{vocab, ffn_width} of the model where its config can be read without loading it (a config.json,
    a GGUF header or the local hub cache); a missing one is left out."""
    try:
        source = (model_files.ModelSource(str(materialized_dir))
                  if materialized_dir and (Path(materialized_dir) / "config.json").is_file()
                  else model_files.resolve_source(config["model"]))
        if source.gguf_file:
            metadata = model_files.gguf_metadata(Path(source.path) / source.gguf_file)
            arch = metadata["general.architecture"]
            values = {"vocab": metadata.get(f"{arch}.vocab_size"),
                      "ffn_width": metadata.get(f"{arch}.feed_forward_length")}
        else:
            model_config = json.loads((model_files.model_directory(source) / "config.json").read_text())
            model_config = model_config.get("text_config") or model_config
            values = {"vocab": model_config.get("vocab_size"),
                      "ffn_width": model_config.get("intermediate_size") or model_config.get("n_inner")}
    except (OSError, ValueError, KeyError):
        return {}
    return {key: int(value) for key, value in values.items() if value}


def corpus_bytes(corpus: Mapping) -> int | None:
    """The text of ``corpus.source: files`` (a .zst file counts :data:`ZSTD_RATIO` × its size), or None
    when the source is another or a file is not there (yet)."""
    if corpus["source"] != "files":
        return None
    total = 0
    for name in corpus["files"]["paths"]:
        path = Path(name)
        if not path.is_file():
            return None
        total += path.stat().st_size * (ZSTD_RATIO if path.suffix == ".zst" else 1)
    return total


def predictor_sizes(config: Mapping, shape: model_files.ModelShape) -> dict[str, int]:
    """The configured predictor's parameters (its settings' closed-form count: no torch, no module built),
    its per-token width (attention: n_heads × d_head per layer, plus an MLP's hidden width, a transformer
    block's MLP and a lag stack's k × d), its attention heads over all layers, and k when it is fitted in
    closed form."""
    settings = pnconfig.predictor_config(config, shape)
    params = settings.parameter_count
    layers = int(getattr(settings, "n_layers", 1))
    heads = int(getattr(settings, "n_heads", 0) or 0) * layers
    width = (heads * int(getattr(settings, "d_head", 0) or 0) + int(getattr(settings, "hidden", 0) or 0)
             + int(getattr(settings, "k", 0) or 0) * shape.d_model
             + int(getattr(settings, "mlp_width", 0) or 0) * layers)
    closed_form = predictor_kind(config["predictor"]["kind"]).closed_form
    return {"predictor_params": params, "predictor_width": width or shape.d_model, "predictor_heads": heads,
            "predictor_fit_lags": int(settings.k) if closed_form else 0}


def sizes(config: Mapping, shape: model_files.ModelShape, extras: Mapping[str, int] | None = None,
          predictor: str | None = None) -> Sizes:
    """:class:`Sizes` of a validated config (schema defaults filled in) for a model of ``shape``;
    ``extras``: :func:`model_extras` (an unknown vocabulary counts :data:`ASSUMED_VOCAB`, an unknown FFN
    width 4 × d_model). With ``predictor`` (a name of the config's ``predictors``), the predictor's and
    training's sizes are that entry's (its kind, settings and ``train`` override); without, the
    ``predictor`` section's, and the largest training budget of all entries."""
    extras = extras or {}
    # inspect_text's: the first entry's predictor, whichever ``predictor`` asks, and the longest text (a byte-level
    # tokenizer gives at most a token per UTF-8 byte; one more for a BOS)
    main = pnentries.with_predictor(config, pnentries.predictor_names(config)[0])
    inspect = {"inspect_tokens": max((len(text.encode("utf-8")) + 1 for text in config["inspect"]["texts"].values()),
                                     default=0),
               "main_predictor_params": predictor_sizes(main, shape)["predictor_params"]}
    if predictor is not None:
        config = pnentries.with_predictor(config, predictor)
        steps = config["train"]["steps"]
    else:
        names = pnentries.predictor_names(config)
        steps = max(pnentries.with_predictor(config, name)["train"]["steps"] for name in names)
    windows, section, interventions = config["windows"], config["train"], config["interventions"]
    probe, probe_task = probe_windows(config)
    corpus = config["corpus"]
    embedded_files = 8 * corpus["embedded"]["max_files_per_domain"] if corpus["source"] == "embedded" else 0
    documents = corpus["max_documents"] or (embedded_files if corpus["source"] == "embedded" else ASSUMED_DOCUMENTS)
    text_bytes = corpus_bytes(corpus)
    if text_bytes is not None:
        documents = min(documents, max(1, text_bytes // 50))
    lags = [int(name.removeprefix("ridge_ar")) for name in config["metrics"]["baselines"]
            if name.startswith("ridge_ar")]
    model_dtype = config["model"]["dtype"]
    return Sizes(
        windows={"predictor_train": windows["predictor_train"], "predictor_val": windows["predictor_val"],
                 "predictor_eval": windows["predictor_eval"],
                 "probe": probe, "probe_task": probe_task},
        length=windows["length"], extraction_batch=config["extraction"]["batch_size"],
        train_batch=section["batch_size"], eval_windows=section["eval_windows"],
        steps=steps,
        eval_every=section["eval_every"], stream=section["data"] == "stream", n_layers=len(config["layers"]),
        storage_bytes=4 if config["extraction"]["dtype"] == "float32" else 2,
        model_bytes=2 if model_dtype in ("bfloat16", "float16") else 4, device_is_cpu=config["device"] == "cpu",
        d_model=shape.d_model, n_blocks=shape.n_blocks, attention_width=shape.attention_width,
        vocab=extras.get("vocab", ASSUMED_VOCAB), ffn_width=extras.get("ffn_width", 4 * shape.d_model),
        **predictor_sizes(config, shape),
        ridge_lags=max(lags, default=0), n_baselines=len(config["metrics"]["baselines"]),
        baseline_train_windows=config["metrics"]["baseline_train_windows"], bootstrap=config["metrics"]["bootstrap"],
        documents=documents, corpus_bytes=text_bytes, windows_per_document=windows["per_document"],
        dedup_near=corpus["dedup"] == "near",
        embedded_files=embedded_files, c_grid=len(config["probes"]["c_grid"]), max_iter=config["probes"]["max_iter"],
        shared_probe_states=config["probes"]["shared_states"], intervention_batch=interventions["batch_size"],
        scored_positions=max(1, windows["length"] - interventions["from_position"]),
        patching_windows=interventions["patching_windows"],
        steering_windows_per_domain=interventions["steering_windows_per_domain"],
        steering_alphas=sum(alpha != 0 for alpha in interventions["alphas"]), **inspect)


def estimates(config: Mapping, shape: model_files.ModelShape, extras: Mapping[str, int] | None = None,
              predictor: str | None = None) -> dict[str, Estimate]:
    """{rule: Estimate} of every rule in :data:`STAGES`; with ``predictor``, the :data:`PREDICTOR_RULES`'
    are that predictor's (:func:`sizes`)."""
    s = sizes(config, shape, extras, predictor)
    return {rule: stage(s) for rule, stage in STAGES.items()}


def requests(config: Mapping, shape: model_files.ModelShape, materialized_dir: str | None = None,
             predictor: str | None = None) -> dict[str, Request]:
    """{rule: Request} for every rule that runs as a job, from the config's sizes and the model's; with
    ``predictor``, a :data:`PREDICTOR_RULES` job of that predictor asks for what that predictor needs."""
    found = estimates(config, shape, model_extras(config, materialized_dir), predictor)
    return {rule: estimate.request() for rule, estimate in found.items()}
