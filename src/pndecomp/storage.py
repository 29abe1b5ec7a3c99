"""File I/O shared by every stage: atomic writes, streamed safetensors, provenance metadata.

Every output is written under a temporary name in its final directory and renamed into place,
so an interrupted job never leaves a half-written file under a final name. torch is imported only by
the functions that write tensors: the table, JSON, Parquet and metadata helpers serve torch-free jobs.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import importlib.metadata
import json
import os
import platform
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

_UMASK = os.umask(0)
os.umask(_UMASK)

TRACKED_PACKAGES = ("torch", "transformers", "numpy", "scikit-learn", "pandas", "pndecomp")


def _safetensors_dtype(dtype: torch.dtype) -> str:
    import torch

    return {
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.float32: "F32",
        torch.int32: "I32",
        torch.int64: "I64",
    }[dtype]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; move it to ``path`` only if the block succeeds.

    The temporary is an empty file, or with ``directory=True`` an empty directory, which on success
    replaces whatever directory is at ``path``. Either gets the usual mode (0666 or 0777 & ~umask,
    not mkstemp's 0600). If the block raises, the temporary is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = {"prefix": f".{path.name}.", "suffix": ".tmp", "dir": path.parent}
    if directory:
        tmp = Path(tempfile.mkdtemp(**names))
    else:
        fd, tmp_name = tempfile.mkstemp(**names)
        os.close(fd)
        tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_UMASK)
        if directory:
            _replace_directory(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _replace_directory(new: Path, path: Path) -> None:
    """Rename directory ``new`` to ``path``; an existing directory there is moved aside, then deleted."""
    if not path.is_dir() or path.is_symlink():
        os.replace(new, path)  # nothing there, or a file: os.replace raises for a file
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.replace(path, old)  # a directory may replace an empty directory
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


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


def parquet_metadata(path: str | os.PathLike) -> dict:
    """The provenance :func:`write_parquet` stored with a table ({} for a table without)."""
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(b"pndecomp")
    return json.loads(raw) if raw else {}


def write_tsv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """A human-readable table: tab-separated, 6 significant digits."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")


def provenance(**extra: object) -> dict:
    """Package versions and platform, plus whatever the caller adds (seed, model file hash, ...)."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"packages": versions, "python": platform.python_version(), **extra}


def _header_bytes(entries: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: Mapping | None) -> bytes:
    """A safetensors header for tensors laid out in the given order, keys sorted for stable bytes.

    (The safetensors library writes metadata in a per-process random order, so equal files would
    differ byte for byte between runs.)
    """
    import torch

    header, offset = {}, 0
    for name, dtype, shape in entries:
        n_bytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _safetensors_dtype(dtype), "shape": list(shape),
                        "data_offsets": [offset, offset + n_bytes]}
        offset += n_bytes
    if metadata:
        header["__metadata__"] = {k: json.dumps(v, sort_keys=True, default=str) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data must start 8-byte aligned
    return struct.pack("<Q", len(encoded)) + encoded


def _raw_bytes(tensor: torch.Tensor, dtype: torch.dtype) -> bytes:
    import torch

    array = tensor.detach().to("cpu", dtype).contiguous()
    # bf16 has no numpy dtype: take its bytes through an int16 view.
    return (array.view(torch.int16) if dtype == torch.bfloat16 else array).numpy().tobytes()


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping | None = None) -> None:
    """A safetensors file with JSON-encoded metadata values, byte-identical for equal input."""
    names = sorted(tensors)
    entries = [(name, tensors[name].dtype, tuple(tensors[name].shape)) for name in names]
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(_header_bytes(entries, metadata))
        for name in names:
            handle.write(_raw_bytes(tensors[name], tensors[name].dtype))


def load_metadata(path: str | os.PathLike) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:  # "pt" would import torch
        return {key: json.loads(value) for key, value in (handle.metadata() or {}).items()}


@functools.cache
def _malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


def release_freed_memory() -> None:
    """Return the C heap's free pages to the OS (glibc's ``malloc_trim``), between batches.

    glibc serves blocks below its mmap threshold, which rises to 32 MB once such a block is freed, from
    its heap; a batch's float64 temporaries (19 MB at 32 × 128 × 576) then land there, and the small
    arrays a stage keeps per batch split the holes they leave, so without this the resident set grew by
    ~20 MB per batch (per_position_metrics: +730 MB over 32 batches, +93 MB with it).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def tensor_shape(path: str | os.PathLike, name: str) -> tuple[int, ...]:
    """The shape of a safetensors file's tensor ``name``, from its header."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return tuple(handle.get_slice(name).get_shape())


def hidden_batches(path: str | os.PathLike, batch_size: int, name: str = "hidden", limit: int | None = None):
    """[batch, ...] slices of a file's tensor ``name`` along its first axis, one batch at a time (memory:
    one batch); ``limit`` stops after that many rows.

    Each batch is read through a mapping of its own, closed before the batch is handed out: the pages
    of one long-lived mapping stay resident as the reads go on, and a process that read a 4 GB file
    batch by batch would end up with all of it in its RSS (page cache, reclaimable, but counted).
    """
    from safetensors import safe_open

    n_rows = tensor_shape(path, name)[0]
    n_rows = n_rows if limit is None else min(limit, n_rows)
    for start in range(0, n_rows, batch_size):
        with safe_open(str(path), framework="pt") as handle:
            batch = handle.get_slice(name)[start:min(start + batch_size, n_rows)]
        yield batch
        del batch
        release_freed_memory()  # the caller is done with the batch's temporaries


class _Aborted(Exception):
    """Raised into an AtomicWriter's atomic_path to discard what it wrote."""


class AtomicWriter:
    """A writer whose output is renamed into place by ``close()`` (subclasses define it, closing
    ``self._stack``, an ExitStack around :func:`atomic_path`); ``abort()`` or an exception inside its
    ``with`` block discards the unfinished output instead."""

    _stack: contextlib.ExitStack

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Close and delete the unfinished output: atomic_path sees an exception, so it does not rename."""
        with contextlib.suppress(_Aborted), self._stack:
            raise _Aborted

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class StreamingTensorsWriter(AtomicWriter):
    """Write several safetensors tensors of known shapes batch by batch along their first axes.

    safetensors has no append API, but its layout is a JSON header followed by each tensor's raw
    little-endian bytes, one contiguous region per tensor (in sorted-name order, as
    :func:`save_tensors` lays them out). With the final shapes known up front, every batch's rows go
    straight to their place in their tensor's region (a seek and a write), so peak memory stays one
    batch whatever the number of rows, and the file equals :func:`save_tensors`' of the whole tensors
    byte for byte.
    """

    def __init__(self, path: str | os.PathLike, tensors: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                 metadata: Mapping | None = None):
        """``tensors``: {name: (shape, dtype)}."""
        import torch

        if not tensors:
            raise ValueError(f"{path}: no tensors to write")
        self.path = Path(path)
        self.shapes = {name: tuple(int(s) for s in shape) for name, (shape, _) in tensors.items()}
        self.dtypes = {name: dtype for name, (_, dtype) in tensors.items()}
        self.rows_written = dict.fromkeys(self.shapes, 0)
        header = _header_bytes([(name, self.dtypes[name], self.shapes[name]) for name in sorted(tensors)], metadata)
        # Where each tensor's bytes start in the file, and the bytes of one row along its first axis.
        self._start, self._row_bytes, offset = {}, {}, len(header)
        for name in sorted(tensors):
            shape = self.shapes[name]
            self._row_bytes[name] = int(np.prod(shape[1:], dtype=np.int64)) * torch.empty(
                (), dtype=self.dtypes[name]).element_size()
            self._start[name] = offset
            offset += shape[0] * self._row_bytes[name] if shape else self._row_bytes[name]
        with contextlib.ExitStack() as stack:  # unwound (the file removed) if the header fails
            self._file = stack.enter_context(open(stack.enter_context(atomic_path(self.path)), "wb"))
            self._file.write(header)
            self._stack = stack.pop_all()

    def write(self, batches: Mapping[str, torch.Tensor]) -> None:
        """Append rows to some or all of the tensors: {name: [rows, *shape[1:]]}."""
        for name, batch in batches.items():
            if name not in self.shapes:
                raise KeyError(f"{self.path}: no tensor {name!r} (it has {sorted(self.shapes)})")
            shape = self.shapes[name]
            if tuple(batch.shape[1:]) != shape[1:]:
                raise ValueError(f"{name}: batch shape {tuple(batch.shape)} does not match {shape} after the "
                                 "first axis")
            if self.rows_written[name] + batch.shape[0] > shape[0]:
                raise ValueError(f"{self.path}: more than {shape[0]} rows written to {name!r}")
        for name, batch in batches.items():
            self._file.seek(self._start[name] + self.rows_written[name] * self._row_bytes[name])
            self._file.write(_raw_bytes(batch, self.dtypes[name]))
            self.rows_written[name] += batch.shape[0]

    def close(self) -> None:
        """Finish the file; renames it into place only if every row of every tensor was written."""
        missing = {name: f"{self.rows_written[name]} of {shape[0]} rows" for name, shape in self.shapes.items()
                   if self.rows_written[name] != shape[0]}
        if missing:
            self.abort()
            if len(self.shapes) == 1:
                raise RuntimeError(f"{self.path}: {next(iter(missing.values()))} written")
            raise RuntimeError(f"{self.path}: incomplete tensors: " + ", ".join(
                f"{name} {rows} written" for name, rows in sorted(missing.items())))
        self._stack.close()  # closes the file, then atomic_path renames it into place


class StreamingTensorWriter(StreamingTensorsWriter):
    """Write one safetensors tensor of known shape batch by batch along its first axis (see
    :class:`StreamingTensorsWriter`); the result is an ordinary safetensors file."""

    def __init__(self, path: str | os.PathLike, name: str, shape: tuple[int, ...], dtype: torch.dtype,
                 metadata: Mapping | None = None):
        self.name = name
        super().__init__(path, {name: (shape, dtype)}, metadata)
        self.shape = self.shapes[name]
        self.dtype = dtype

    def write(self, batch: torch.Tensor) -> None:
        super().write({self.name: batch})


class WriteBehind:
    """Runs writes on one background thread, in the order submitted, at most ``depth`` of them pending, so the
    producer (the LM's forward) does not wait on the disk. A write's error is raised by a later
    :meth:`submit` or on leaving the ``with`` block, which waits for every pending write; on an error in the
    block the pending writes finish and their errors are dropped, so the block's own error is the one seen.
    """

    def __init__(self, depth: int = 2):
        self.depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pndecomp-write")
        self._pending: collections.deque[Future] = collections.deque()

    def submit(self, write: Callable, *arguments) -> None:
        self._pending.append(self._pool.submit(write, *arguments))
        while len(self._pending) > self.depth:
            self._pending.popleft().result()

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        try:
            while self._pending:
                future = self._pending.popleft()
                if error_type is None:
                    future.result()
                else:
                    future.exception()  # wait for it; the block's error is the one to report
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
