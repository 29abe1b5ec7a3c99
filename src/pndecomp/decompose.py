"""Decompose any text with a finished run: h, ĥ = f(h_<t) and r = h − ĥ of the run's LM and predictors.

``Decomposer.from_run("results/<experiment>")`` loads the run's LM and tokenizer (its materialized ``model/``
and ``tokenizer/`` directories, or its ``model.id`` from the local hub cache), each layer's trained predictor
with its normalisation, and the run's conventions from its resolved config: the layers (block outputs
before the final norm, ``embed``, ``final``: :data:`pndecomp.model_files.LAYER_CONVENTION`), the LM's dtype,
the storage dtype the hidden states are rounded through before the predictor sees them, and the BOS token
every window starts with (``windows.prepend_bos``). Calling it on texts (or token ids) gives a
:class:`Decomposition` with the numbers the pipeline computes for its own windows: for the predictor_eval
windows' token ids, ``.r`` is ``residuals/<p>/predictor_eval/layer-<ℓ>`` and ``.surprisal`` is
``activations/predictor_eval/surprisal`` (tests/test_decompose.py). ``python -m pndecomp.decompose`` is the
command; the per-token page is :mod:`pndecomp.token_view`.
"""
from __future__ import annotations

import argparse
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import adapters, lm, model_files, results
from . import config as pnconfig
from .predictor import load_predictor
from .results import ResultsError
from .stages.common import load_frozen_lm, model_source

#: The columns of :meth:`Decomposition.to_frame`, one row per (text, layer, position).
FRAME_COLUMNS = ("text", "layer", "position", "token", "token_id", "h_norm", "hhat_norm", "r_norm", "r_over_h",
                 "cos_h_hhat", "surprisal")


@dataclass
class Decomposition:
    """The decomposition of one or more texts; every per-text array is indexed by position 1..T as 0..T−1.

    ``h``, ``hhat``, ``r``: per text, float32 [n_layers, T, d_model] in the order of ``layers``. ``h`` is the
    LM's hidden state rounded through the run's storage dtype (what the pipeline stores and its predictor
    sees); row t of ``hhat`` is f(h_1..h_{t−1}); ``r = h − hhat`` exactly. Position 1 has no prediction: its
    ``hhat`` and ``r`` rows are NaN. ``surprisal``: per text, float32 [T], −log p(x_t | x_<t) in nats (NaN at
    position 1). ``tokens``: each token decoded alone; ``token_ids``: int64 [T].
    """

    tokens: list[list[str]]
    token_ids: list[np.ndarray]
    layers: list[str]
    h: list[np.ndarray]
    hhat: list[np.ndarray]
    r: list[np.ndarray]
    surprisal: list[np.ndarray]
    predictor: str = ""
    source: str = ""  # the run (or model) it came from, for titles

    def __len__(self) -> int:
        return len(self.token_ids)

    def norms(self, index: int) -> dict[str, np.ndarray]:
        """Text ``index``'s ‖h‖, ‖ĥ‖, ‖r‖, ‖r‖/‖h‖ and cos(h, ĥ), each float64 [n_layers, T] (NaN at position 1)."""
        h, hhat, r = (array[index].astype(np.float64) for array in (self.h, self.hhat, self.r))
        h_norm, hhat_norm = np.linalg.norm(h, axis=-1), np.linalg.norm(hhat, axis=-1)
        r_norm = np.linalg.norm(r, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"h_norm": h_norm, "hhat_norm": hhat_norm, "r_norm": r_norm, "r_over_h": r_norm / h_norm,
                    "cos_h_hhat": (h * hhat).sum(axis=-1) / (h_norm * hhat_norm)}

    def to_frame(self) -> pd.DataFrame:
        """One row per (text, layer, position): :data:`FRAME_COLUMNS` (``text`` the text's index, ``layer`` an
        ordered categorical in model order, ``position`` 1-based)."""
        frames = []
        for index, ids in enumerate(self.token_ids):
            n_layers, length = len(self.layers), len(ids)
            frame = pd.DataFrame({
                "text": index, "layer": np.repeat(self.layers, length), "position": np.tile(np.arange(1, length + 1),
                                                                                          n_layers),
                "token": np.tile(np.asarray(self.tokens[index], dtype=object), n_layers),
                "token_id": np.tile(ids, n_layers)})
            for name, values in self.norms(index).items():
                frame[name] = values.reshape(-1)
            frame["surprisal"] = np.tile(self.surprisal[index].astype(np.float64), n_layers)
            frames.append(frame)
        frame = pd.concat(frames, ignore_index=True)
        frame["layer"] = results.ordered_layers(frame["layer"])
        return frame[list(FRAME_COLUMNS)]

    def figure(self, index: int = 0):
        """Text ``index``'s plotly figure: heatmaps of ‖r‖/‖h‖ (layers × tokens) and of surprisal."""
        from .token_view import figure

        return figure(self, index)

    def to_html(self, path: str | Path, layer: str | int | None = None, title: str | None = None) -> Path:
        """The per-token page (:func:`pndecomp.token_view.write_page`): one self-contained HTML file."""
        from .token_view import write_page

        return write_page(self, path, layer=layer, title=title)


class Decomposer:
    """An LM, its tokenizer and one predictor per layer: ``decomposer(texts_or_token_ids)`` -> :class:`Decomposition`.

    ``storage_dtype``: the dtype hidden states are rounded through before the predictor sees them (the
    run's); ``prepend_bos``: every text starts with the BOS token, as every window of a run with
    ``windows.prepend_bos`` does. Texts are tokenized without other special tokens, as the windows are. A text
    may be as long as the LM's context; positions beyond the run's ``windows.length`` are beyond what its
    predictors were trained on.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, predictors: Mapping[str, torch.nn.Module], *,
                 storage_dtype: torch.dtype = torch.float32, prepend_bos: bool = False, batch_size: int = 16,
                 predictor_name: str = "", source: str = ""):
        if prepend_bos and tokenizer.bos_token_id is None:
            raise ValueError("prepend_bos is true but the tokenizer has no BOS token")
        self.model, self.tokenizer, self.predictors = model, tokenizer, dict(predictors)
        self.layers = [str(layer) for layer in self.predictors]
        self.capture = lm.ResidualCapture(model, [model_files.parse_layer(layer) for layer in self.layers])
        self.storage_dtype, self.prepend_bos, self.batch_size = storage_dtype, prepend_bos, batch_size
        self.predictor_name, self.source = predictor_name, source
        self.context_length = adapters.context_length(model.config)
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self.device = next(model.parameters()).device

    @classmethod
    def from_run(cls, run_dir: str | Path, layers: Sequence[str | int] | str | int | None = None,
                 predictor: str | None = None, device: str | torch.device = "auto",
                 batch_size: int | None = None) -> Decomposer:
        """The decomposer of a finished run (``results/<experiment>``): its LM, tokenizer and conventions, and
        the predictor ``predictor`` (default: the run's first) of each layer in ``layers`` (default: all the
        run trained). Everything is checked, naming what is valid, before the LM is loaded."""
        run = results.load(run_dir)
        if run.models:
            first = next(iter(run.models))
            raise ResultsError(f"{run.path} is a model study of {list(run.models)}: decompose with one model's run, "
                               f"e.g. Decomposer.from_run({str(run.path / first)!r})")
        if run.config is None:
            raise ResultsError(f"{run.path} has no config.yaml (the run's resolved config, which says how its LM and "
                               "layers are set up): rerun its workflow, which writes it first")
        config = run.config
        names = run.predictors
        predictor = names[0] if predictor is None else predictor
        if predictor not in names:
            raise ValueError(f"predictor {predictor!r} is not one of the run's predictors: {names}")
        trained = pnconfig.layer_names(config)
        chosen = trained if layers is None else [str(layer) for layer in _as_list(layers)]
        unknown = [layer for layer in chosen if layer not in trained]
        if unknown or not chosen:
            raise ValueError(f"layers {unknown or chosen!r}: the run trained predictors at layers {trained} only")
        paths = {layer: run.path / "predictors" / predictor / f"layer-{layer}" / "predictor.safetensors"
                 for layer in chosen}
        required = list(paths.values())
        choice = run.path / "activations" / "storage_dtype.json"
        if config["extraction"]["dtype"] == "auto":
            required.append(choice)
        missing = [str(path) for path in required if not path.is_file()]
        if missing:
            raise ResultsError(f"{run.path}: missing {', '.join(missing)} (the run is unfinished); "
                               f"`snakemake {' '.join(missing)}` makes them (with the run's --configfile)")
        if batch_size is not None:
            config = {**config, "extraction": {**config["extraction"], "batch_size": batch_size}}
        return cls.from_files({**config, "device": str(device)}, paths, predictor_name=predictor, source=str(run.path),
                              materialized_dir=_directory_with(run.path / "model", "config.json"),
                              tokenizer_dir=_directory_with(run.path / "tokenizer", "tokenizer_config.json"),
                              storage_dtype_path=str(choice) if config["extraction"]["dtype"] == "auto" else None)

    @classmethod
    def from_files(cls, config: Mapping, predictor_paths: Mapping[str, str | Path], *, predictor_name: str = "",
                   source: str = "", materialized_dir: str | None = None, tokenizer_dir: str | None = None,
                   storage_dtype_path: str | None = None) -> Decomposer:
        """From a config (its ``model``, ``seed``, ``device``, ``extraction`` and ``windows.prepend_bos``) and
        the predictors' files by layer, as the workflow's inspect_text rule has them."""
        layers = [model_files.parse_layer(layer) for layer in predictor_paths]
        # The shortest text that can be decomposed: text lengths are checked against the context per call.
        model, device = load_frozen_lm(config, materialized_dir, layers, window_length=2)
        tokenizer = lm.load_tokenizer(model_source(config, tokenizer_dir))
        predictors = {str(layer): load_predictor(path, device) for layer, path in predictor_paths.items()}
        return cls(model, tokenizer, predictors, storage_dtype=pnconfig.storage_dtype(config, storage_dtype_path),
                   prepend_bos=config["windows"]["prepend_bos"], batch_size=config["extraction"]["batch_size"],
                   predictor_name=predictor_name, source=source or str(config["model"]["id"]))

    # ------------------------------------------------------------------------------------------ inputs

    def token_ids(self, inputs) -> list[np.ndarray]:
        """The token ids [T] int64 of each text (tokenized as the run's windows are) or given sequence, checked:
        at least 2 tokens, ids within the vocabulary, at most the LM's context."""
        sequences = []
        for index, item in enumerate(_as_inputs(inputs)):
            if isinstance(item, str):
                if not item.strip():
                    raise ValueError(f"text {index} is empty ({item!r}): give text to decompose")
                bos = [self.tokenizer.bos_token_id] if self.prepend_bos else []
                ids = np.asarray([*bos, *self.tokenizer(item, add_special_tokens=False)["input_ids"]], dtype=np.int64)
            else:
                ids = np.asarray(item, dtype=np.int64).reshape(-1)
                outside = ids[(ids < 0) | (ids >= self.vocab_size)]
                if outside.size:
                    raise ValueError(f"token ids {index}: {outside[:5].tolist()} are outside the vocabulary "
                                     f"(0..{self.vocab_size - 1})")
            if len(ids) < 2:
                raise ValueError(f"input {index} has {len(ids)} token(s); decomposing needs at least 2 (position 1 "
                                 "has no prediction)")
            if self.context_length is not None and len(ids) > self.context_length:
                raise ValueError(f"input {index} has {len(ids)} tokens, more than the LM's context of "
                                 f"{self.context_length} tokens: shorten it or split it")
            sequences.append(ids)
        return sequences

    # ------------------------------------------------------------------------------------------ the work

    @torch.no_grad()
    def __call__(self, inputs, batch_size: int | None = None) -> Decomposition:
        """Decompose a text, a list of texts, or token ids (one sequence, a list of them, or [n, T]). Texts of
        equal length share a batch (``batch_size``, default the run's ``extraction.batch_size``), so no padding
        changes a number."""
        sequences = self.token_ids(inputs)
        batch_size = batch_size or self.batch_size
        parts: list[dict | None] = [None] * len(sequences)
        by_length: dict[int, list[int]] = {}
        for index, ids in enumerate(sequences):
            by_length.setdefault(len(ids), []).append(index)
        for indices in by_length.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                for index, part in zip(chunk, self._batch(np.stack([sequences[i] for i in chunk]))):
                    parts[index] = part
        return Decomposition(
            tokens=[[self.tokenizer.decode([int(token)]) for token in ids] for ids in sequences],
            token_ids=sequences, layers=list(self.layers), h=[part["h"] for part in parts],
            hhat=[part["hhat"] for part in parts], r=[part["r"] for part in parts],
            surprisal=[part["surprisal"] for part in parts], predictor=self.predictor_name, source=self.source)

    def _batch(self, ids: np.ndarray) -> list[dict[str, np.ndarray]]:
        """h, ĥ, r [n_layers, T, d] and surprisal [T] of each row of ``ids`` [batch, T], as the pipeline computes
        them: states from one LM pass rounded through the storage dtype, then r = h − f(h) as
        :func:`pndecomp.predictor.residuals` has it."""
        input_ids = torch.from_numpy(ids).to(self.device)
        hidden, logits = self.capture.run(input_ids, logits=True)
        surprisal = lm.surprisal(logits, input_ids).cpu()
        del logits
        batch = len(ids)
        per_layer = {name: [] for name in ("h", "hhat", "r")}
        for name, layer in zip(self.layers, self.capture.layers):
            stored = hidden[layer].to(self.storage_dtype)
            if not torch.isfinite(stored).all():
                raise FloatingPointError(f"layer {name}: a hidden state is not finite in the storage dtype "
                                         f"{self.storage_dtype} (the run's extraction.dtype)")
            model = self.predictors[name]
            states = stored.to(next(model.parameters()).dtype)
            h = states.float()
            hhat = model(states[:, :-1]).float()
            nan_row = torch.full((batch, 1, h.shape[-1]), float("nan"), device=h.device)
            per_layer["h"].append(h.cpu())
            per_layer["hhat"].append(torch.cat([nan_row, hhat], dim=1).cpu())
            per_layer["r"].append(torch.cat([nan_row, h[:, 1:] - hhat], dim=1).cpu())
        stacked = {name: torch.stack(tensors, dim=1).numpy() for name, tensors in per_layer.items()}
        surprisal = torch.cat([torch.full((batch, 1), float("nan")), surprisal], dim=1).numpy()
        return [{**{name: values[row] for name, values in stacked.items()}, "surprisal": surprisal[row]}
                for row in range(batch)]


def _as_list(value) -> list:
    return [value] if isinstance(value, (str, numbers.Integral)) else list(value)


def _as_inputs(inputs) -> list:
    """Texts or id sequences: a string, one sequence of ids, or a list / array / tensor of several."""
    if isinstance(inputs, str):
        return [inputs]
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        array = np.asarray(inputs.cpu() if isinstance(inputs, torch.Tensor) else inputs)
        if array.ndim not in (1, 2) or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"token ids must be a non-empty integer array of 1 or 2 dimensions, got "
                             f"{array.dtype} of shape {array.shape}")
        return [array] if array.ndim == 1 else list(array)
    items = list(inputs)
    if not items:
        raise ValueError("nothing to decompose: give a text, a list of texts or token ids")
    if all(isinstance(item, numbers.Integral) for item in items):
        return [np.asarray(items, dtype=np.int64)]
    for index, item in enumerate(items):
        values = item if isinstance(item, str) else np.asarray(item.cpu() if isinstance(item, torch.Tensor) else item)
        if not isinstance(values, str) and (values.ndim != 1 or not np.issubdtype(values.dtype, np.integer)):
            raise TypeError(f"input {index} is {type(item).__name__} {item!r:.60}: give texts (str) or sequences of "
                            "token ids (ints)")
    return items


def _directory_with(directory: Path, marker: str) -> str | None:
    """``directory`` when it holds ``marker`` (a materialized model or tokenizer), else None."""
    return str(directory) if (directory / marker).is_file() else None


# ---------------------------------------------------------------------------------------------- the workflow's page

def inspect_page(config: Mapping, text: str, predictor_paths: Mapping[str, str], out_html: str, *, name: str,
                 predictor_name: str, materialized_dir: str | None = None, tokenizer_dir: str | None = None,
                 storage_dtype_path: str | None = None) -> None:
    """``results/<experiment>/inspect/<name>.html``: the per-token page of one configured text."""
    decomposer = Decomposer.from_files(config, predictor_paths, predictor_name=predictor_name,
                                       source=f"results/{config['experiment']}", materialized_dir=materialized_dir,
                                       tokenizer_dir=tokenizer_dir, storage_dtype_path=storage_dtype_path)
    decomposer(text).to_html(out_html, title=f"{name} ({config['experiment']}, predictor {predictor_name})")


# ---------------------------------------------------------------------------------------------- the command

def main(argv: list[str] | None = None) -> None:
    """``python -m pndecomp.decompose RUN (--text "…" | --file F) [--layers …] [--predictor P] --html out.html
    [--tsv out.tsv]``: decompose texts with a finished run's LM and predictors; the per-token page (and the
    table of :meth:`Decomposition.to_frame`)."""
    parser = argparse.ArgumentParser(prog="python -m pndecomp.decompose", description=main.__doc__)
    parser.add_argument("run", help="a run's results directory, e.g. results/embedded-smollm2")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--text", action="append", help="a text to decompose (repeat for several)")
    given.add_argument("--file", action="append", type=Path, help="a UTF-8 file whose whole content is one text "
                                                                  "(repeat for several)")
    parser.add_argument("--layers", nargs="+", help="layers to decompose (default: every layer the run trained)")
    parser.add_argument("--predictor", help="a predictor of the run (default: its first)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    parser.add_argument("--html", required=True, type=Path, help="where the per-token page goes")
    parser.add_argument("--tsv", type=Path, help="where the table goes: one row per (text, layer, position)")
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.file or [] if not path.is_file()]
    if missing:
        parser.error(f"--file {', '.join(missing)}: no such file")
    texts = args.text or [path.read_text(encoding="utf-8") for path in args.file]
    try:
        decomposer = Decomposer.from_run(args.run, args.layers, args.predictor, args.device)
        decomposition = decomposer(texts)
    except (ResultsError, ValueError) as error:
        parser.error(str(error))
    decomposition.to_html(args.html)
    print(f"wrote {args.html}")
    if args.tsv is not None:
        from .storage import write_tsv

        write_tsv(decomposition.to_frame(), args.tsv)
        print(f"wrote {args.tsv}")


if __name__ == "__main__":
    main()
