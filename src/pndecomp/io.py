"""File I/O shared by every stage: atomic writes, streamed safetensors, provenance metadata.

Every output is written under a temporary name in its final directory and renamed into place,
so an interrupted job never leaves a half-written file under a final name.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import struct
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

TRACKED_PACKAGES = ("torch", "transformers", "numpy", "scikit-learn", "pandas", "pndecomp")

_SAFETENSORS_DTYPES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.int32: "I32",
    torch.int64: "I64",
}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_json(obj: object, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike, metadata: Mapping | None = None) -> None:
    """Parquet with provenance in the schema metadata; no pandas index, stable bytes for equal input."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged[b"pndecomp"] = json.dumps(metadata, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def provenance(**extra: object) -> dict:
    """Package versions and platform, plus whatever the caller adds (seed, model file hash, ...)."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"packages": versions, "python": platform.python_version(), **extra}


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping | None = None) -> None:
    """safetensors file; metadata values are JSON-encoded (safetensors metadata is str -> str)."""
    meta = {key: json.dumps(value, sort_keys=True, default=str) for key, value in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def load_metadata(path: str | os.PathLike) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {key: json.loads(value) for key, value in (handle.metadata() or {}).items()}


class StreamingTensorWriter:
    """Write one safetensors tensor of known shape batch by batch along its first axis.

    safetensors has no append API, but its layout is a JSON header followed by raw little-endian
    bytes, so with the final shape known up front the data can stream to disk and peak memory stays
    one batch, whatever the number of windows. The result is an ordinary safetensors file.
    """

    def __init__(self, path: str | os.PathLike, name: str, shape: tuple[int, ...], dtype: torch.dtype,
                 metadata: Mapping | None = None):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self.rows_written = 0
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        header = {name: {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(self.shape),
                         "data_offsets": [0, self._row_bytes * self.shape[0]]}}
        if metadata:
            header["__metadata__"] = {k: json.dumps(v, sort_keys=True, default=str) for k, v in metadata.items()}
        header_bytes = json.dumps(header, separators=(",", ":")).encode()
        header_bytes += b" " * (-len(header_bytes) % 8)  # the data must start 8-byte aligned
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._file = open(self._tmp, "wb")
        self._file.write(struct.pack("<Q", len(header_bytes)))
        self._file.write(header_bytes)

    def write(self, batch: torch.Tensor) -> None:
        if tuple(batch.shape[1:]) != self.shape[1:]:
            raise ValueError(f"batch shape {tuple(batch.shape)} does not match {self.shape} after the first axis")
        if self.rows_written + batch.shape[0] > self.shape[0]:
            raise ValueError(f"{self.path}: more than {self.shape[0]} rows written")
        array = batch.detach().to("cpu", self.dtype).contiguous()
        # bf16 has no numpy dtype: write its bytes through an int16 view.
        raw = array.view(torch.int16) if self.dtype == torch.bfloat16 else array
        self._file.write(raw.numpy().tobytes())
        self.rows_written += batch.shape[0]

    def close(self) -> None:
        """Finish the file; renames it into place only if every row was written."""
        if self.rows_written != self.shape[0]:
            self.abort()
            raise RuntimeError(f"{self.path}: {self.rows_written} of {self.shape[0]} rows written")
        self._file.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> StreamingTensorWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
