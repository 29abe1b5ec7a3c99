"""The token store behind stream-mode training: every predictor_train document's token ids, and the pool of
windows drawn from them.

A store is a directory (nanoGPT style): ``tokens.bin`` holds the documents' token ids back to back, uint16
when the vocabulary fits and uint32 otherwise, memory-mapped for reading; ``documents.parquet`` lists each
document's id, the offset of its first token in ``tokens.bin`` and its token count, and its metadata holds
the token dtype, the window length T and the BOS id (``null`` without ``windows.prepend_bos``).

The pool is every non-overlapping slot of every document: slot k of a document covers its tokens
[k·S, (k+1)·S), S = T − 1 after a BOS with ``windows.prepend_bos`` and S = T without, so a document of n
tokens gives ⌊n / S⌋ windows. Stream-mode training draws its batches from the pool (see
:func:`pndecomp.train.batch_indices`).
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .storage import AtomicWriter, atomic_path, write_parquet

TOKENS_FILE, DOCUMENTS_FILE = "tokens.bin", "documents.parquet"


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every id of a vocabulary of ``vocab_size`` tokens."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def slots(n_tokens: np.ndarray, window_length: int, bos_token_id: int | None) -> np.ndarray:
    """Pool windows per document: ⌊n_tokens / S⌋, S = the document tokens in one window."""
    return np.asarray(n_tokens, dtype=np.int64) // (window_length - (bos_token_id is not None))


class TokenStoreWriter(AtomicWriter):
    """Write a store one document at a time (memory: the document table), renamed into place on close.

    Used as a context manager: an exception inside the block removes the unfinished store.
    """

    def __init__(self, path: str | os.PathLike, *, vocab_size: int, window_length: int, bos_token_id: int | None,
                 metadata: Mapping | None = None):
        self.vocab_size, self.dtype = vocab_size, token_dtype(vocab_size)
        self.layout = {"token_dtype": self.dtype.name, "window_length": window_length, "bos_token_id": bos_token_id}
        self.metadata = dict(metadata or {})
        self._doc_ids: list[str] = []
        self._n_tokens: list[int] = []
        self._written = 0
        with contextlib.ExitStack() as stack:  # unwound (the directory removed) if opening fails
            self._directory = stack.enter_context(atomic_path(path, directory=True))
            self._file = stack.enter_context(open(self._directory / TOKENS_FILE, "wb"))
            self._stack = stack.pop_all()

    def add(self, doc_id: str, ids: Sequence[int]) -> None:
        array = np.asarray(ids, dtype=np.int64)
        if array.size and (array.min() < 0 or array.max() >= self.vocab_size):
            raise ValueError(f"document {doc_id!r}: token ids outside [0, {self.vocab_size}) "
                             f"(min {array.min()}, max {array.max()}): the vocabulary size is wrong")
        self._file.write(array.astype(self.dtype).tobytes())
        self._doc_ids.append(doc_id)
        self._n_tokens.append(len(array))
        self._written += len(array)

    def summary(self) -> dict:
        """Documents, their tokens, and the pool's windows and tokens (windows × T)."""
        windows = int(slots(np.asarray(self._n_tokens), self.layout["window_length"],
                            self.layout["bos_token_id"]).sum())
        return {"documents": len(self._doc_ids), "document_tokens": self._written, "windows": windows,
                "tokens": windows * self.layout["window_length"]}

    def close(self) -> None:
        n_tokens = np.asarray(self._n_tokens, dtype=np.int64)
        documents = pd.DataFrame({"doc_id": pd.Series(self._doc_ids, dtype=object),
                                  "offset": np.cumsum(n_tokens) - n_tokens, "n_tokens": n_tokens})
        write_parquet(documents, self._directory / DOCUMENTS_FILE, {**self.metadata, "layout": self.layout})
        self._stack.close()  # closes tokens.bin, then atomic_path renames the directory into place


@dataclass(frozen=True)
class WindowPool:
    """The windows of a store: window i starts at token ``starts[i]`` of ``tokens.bin``, in document
    ``documents[window_document[i]]``."""

    path: Path
    tokens: np.ndarray  # memory-mapped, flat
    documents: pd.DataFrame  # doc_id, offset, n_tokens
    window_document: np.ndarray  # [W] row of ``documents``
    starts: np.ndarray  # [W] offset in ``tokens``
    window_length: int
    bos_token_id: int | None

    def __len__(self) -> int:
        return len(self.starts)

    def windows_of(self, indices) -> np.ndarray:
        """The token ids of the pool windows ``indices``: [n, T] int64 (BOS first with prepend_bos)."""
        starts = self.starts[np.asarray(indices, dtype=np.int64)]
        span = self.window_length - (self.bos_token_id is not None)
        ids = self.tokens[starts[:, None] + np.arange(span)].astype(np.int64)
        if self.bos_token_id is not None:
            ids = np.concatenate([np.full((len(ids), 1), self.bos_token_id, dtype=np.int64), ids], axis=1)
        return ids

    def window_id(self, index: int) -> str:
        """``<doc_id>@<start>``, the start in document tokens (the key the windows Parquet files use)."""
        document = self.documents.iloc[int(self.window_document[index])]
        return f"{document['doc_id']}@{int(self.starts[index] - document['offset'])}"


def open_pool(path: str | os.PathLike) -> WindowPool:
    """The window pool of the store at ``path`` (a directory written by :class:`TokenStoreWriter`)."""
    path = Path(path)
    documents = pd.read_parquet(path / DOCUMENTS_FILE)
    layout = json.loads(pq.read_schema(path / DOCUMENTS_FILE).metadata[b"pndecomp"])["layout"]
    dtype = np.dtype(layout["token_dtype"])
    n_tokens = documents["n_tokens"].to_numpy(np.int64)
    expected = int(n_tokens.sum()) * dtype.itemsize
    if (path / TOKENS_FILE).stat().st_size != expected:
        raise ValueError(f"{path / TOKENS_FILE}: {(path / TOKENS_FILE).stat().st_size} bytes, but its document "
                         f"table lists {expected}: the store is damaged; delete {path} and rerun the windows job")
    tokens = np.memmap(path / TOKENS_FILE, dtype=dtype, mode="r") if expected else np.zeros(0, dtype)
    per_document = slots(n_tokens, layout["window_length"], layout["bos_token_id"])
    window_document = np.repeat(np.arange(len(documents)), per_document)
    slot = np.arange(len(window_document)) - np.repeat(np.cumsum(per_document) - per_document, per_document)
    span = layout["window_length"] - (layout["bos_token_id"] is not None)
    starts = documents["offset"].to_numpy(np.int64)[window_document] + slot * span
    return WindowPool(path, tokens, documents, window_document, starts, layout["window_length"],
                      layout["bos_token_id"])
