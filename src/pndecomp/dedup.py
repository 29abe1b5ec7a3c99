"""Near-duplicate groups of documents (SPEC §6): MinHash signatures and LSH banding.

Licences and copied headers repeat with small edits (another copyright line), and a split by
document would put the copies on both sides. A prefix hash is not enough: many code files start
with the same licence header yet differ after it. So each text gets a MinHash signature over its
word 5-gram shingles; documents sharing a band of it (LSH) are compared, and a document whose
estimated Jaccard similarity to a group's first member (its "leader") is >= 0.7 joins that group.
Comparing with the leader, not with any member, keeps groups from chaining into one blob (a file
holding two licences would otherwise join every MIT and every BSD licence into one group).
Documents are visited in doc id order, so a group is named by its smallest doc id, and a document
with no near-duplicate keeps group == doc_id.
"""
from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np

_SHINGLE_WORDS = 5
_MINHASH_BANDS, _MINHASH_ROWS = 16, 4
NEAR_DUPLICATE_JACCARD = 0.7
_UINT64 = np.uint64


def _hash_constants(label: str, n: int) -> np.ndarray:
    digests = (hashlib.sha1(f"{label}-{i}".encode()).digest() for i in range(n))
    return np.array([int.from_bytes(d[:8], "big") | 1 for d in digests], dtype=_UINT64)


_SHINGLE_MULTIPLIERS = _hash_constants("shingle", _SHINGLE_WORDS)
_MINHASH_A = _hash_constants("minhash-a", _MINHASH_BANDS * _MINHASH_ROWS)
_MINHASH_B = _hash_constants("minhash-b", _MINHASH_BANDS * _MINHASH_ROWS)


def _minhash_signature(text: str) -> np.ndarray:
    """[bands * rows] uint64: per hash function, the minimum over the text's word 5-grams."""
    words = re.findall(r"\w+", text.lower()) or [text]
    word_hashes = np.array([zlib.crc32(w.encode("utf-8")) for w in words], dtype=_UINT64)
    width = min(_SHINGLE_WORDS, len(words))
    n_shingles = len(words) - width + 1
    shingles = np.zeros(n_shingles, dtype=_UINT64)
    for i in range(width):  # uint64 arithmetic wraps around: a polynomial hash of the word hashes
        shingles += word_hashes[i : i + n_shingles] * _SHINGLE_MULTIPLIERS[i]
    shingles = np.unique(shingles)
    # Multiply-shift hashing: the high bits of a * x + b mod 2^64 are a universal hash of x.
    hashed = (shingles[None, :] * _MINHASH_A[:, None] + _MINHASH_B[:, None]) >> _UINT64(32)
    return hashed.min(axis=1)


def near_duplicate_groups(doc_ids: list[str], texts: list[str]) -> list[str]:
    """The group of each document: the doc id of its group's leader (itself if it leads)."""
    groups: dict[int, str] = {}
    leaders_by_band: dict[tuple[int, bytes], list[int]] = {}
    signatures: dict[int, np.ndarray] = {}
    for i in sorted(range(len(doc_ids)), key=doc_ids.__getitem__):
        signature = _minhash_signature(texts[i])
        band_keys = [
            (band, signature[band * _MINHASH_ROWS : (band + 1) * _MINHASH_ROWS].tobytes())
            for band in range(_MINHASH_BANDS)
        ]
        candidates = {j for key in band_keys for j in leaders_by_band.get(key, [])}
        candidates = sorted(candidates, key=doc_ids.__getitem__)
        similarity = {j: float(np.mean(signatures[j] == signature)) for j in candidates}
        similar = [j for j in candidates if similarity[j] >= NEAR_DUPLICATE_JACCARD]
        if similar:
            groups[i] = groups[max(similar, key=similarity.__getitem__)]  # ties: the smallest id
            continue
        groups[i] = doc_ids[i]
        signatures[i] = signature
        for key in band_keys:
            leaders_by_band.setdefault(key, []).append(i)
    return [groups[i] for i in range(len(doc_ids))]
