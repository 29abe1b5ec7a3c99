"""The decomposing stages: ĥ and r of the eval windows, and the probe windows' features (h, ĥ, r, h_mean)."""
from __future__ import annotations

from collections.abc import Mapping

from safetensors import safe_open

from .. import config as pnconfig
from .. import extract, metrics, model_files, predictor, storage
from ..storage import hidden_batches
from .common import load_frozen_lm, output_metadata


def decompose_eval(config: Mapping, eval_hidden_path: str, predictor_path: str, out_residual: str,
                   out_scores: str, storage_dtype_path: str | None = None) -> None:
    """r = h − ĥ for positions 2..T of every eval window, and MSE/Var/R² over all of them; the residuals
    are stored like the hidden states (``storage_dtype_path``: see :func:`pndecomp.config.storage_dtype`)."""
    storage_dtype = pnconfig.storage_dtype(config, storage_dtype_path)
    device = pnconfig.resolve_device(config["device"])
    model = predictor.load_predictor(predictor_path, device)
    meta = storage.load_metadata(eval_hidden_path)
    with safe_open(eval_hidden_path, framework="pt") as handle:
        n_windows, length, d_model = handle.get_slice("hidden").get_shape()
    scores = metrics.RegressionAccumulator()
    window_sse = []  # per window, before the residuals are rounded to the storage dtype: for the bootstrap
    metadata = output_metadata(config, layer=meta["layer"])
    with storage.StreamingTensorWriter(out_residual, "residual", (n_windows, length - 1, d_model), storage_dtype,
                                       {**metadata, "positions": "2..T"}) as writer:
        for batch in hidden_batches(eval_hidden_path, config["extraction"]["batch_size"]):
            batch = batch.to(device)
            residual = predictor.residuals(model, batch)
            target = batch[:, 1:].float()
            scores.update(target.cpu().numpy(), (target - residual).cpu().numpy())
            window_sse.extend((residual.double() ** 2).sum(dim=(1, 2)).tolist())
            writer.write(residual)
    storage.write_json({"layer": meta["layer"], "n_windows": int(n_windows), **scores.result(),
                        "window_sse": window_sse, "metadata": metadata}, out_scores)


def probe_features(config: Mapping, materialized_dir: str | None, probe_windows_path: str,
                   predictor_paths: Mapping[str, str], out_paths: Mapping[str, str],
                   storage_dtype_path: str | None = None, hidden_paths: Mapping[str, str] | None = None) -> None:
    """h_T, ĥ_T, r_T and h_mean of the probe windows, from states rounded through the storage dtype
    (``storage_dtype_path``: see :func:`pndecomp.config.storage_dtype`): from an LM pass of this job's
    own, or, given ``hidden_paths`` (``probes.shared_states``), from the probe windows' stored states."""
    outputs = {model_files.parse_layer(name): path for name, path in out_paths.items()}
    batch_size, metadata = config["extraction"]["batch_size"], output_metadata(config)

    def predictors_on(device):
        return {model_files.parse_layer(name): predictor.load_predictor(path, device)
                for name, path in predictor_paths.items()}

    if hidden_paths is not None:
        device = pnconfig.resolve_device(config["device"])
        extract.probe_features_from_states({model_files.parse_layer(name): path for name, path in hidden_paths.items()},
                                           predictors_on(device), outputs, batch_size=batch_size, device=device,
                                           metadata=metadata)
        return
    tokens = extract.window_tokens(probe_windows_path)
    model, device = load_frozen_lm(config, materialized_dir, list(outputs), tokens.shape[1])
    extract.extract_probe_features(
        model, tokens, predictors_on(device), outputs, batch_size=batch_size,
        device=device, storage_dtype=pnconfig.storage_dtype(config, storage_dtype_path), metadata=metadata)
