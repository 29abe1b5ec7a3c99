"""Duplicate groups of documents (docs/method.md §2): exact copies by a hash, near-duplicates by MinHash LSH.

A split by document would put the copies of a text on both sides of it (predictor train and eval,
probe train and test). So copies share a split group: the group of the first document of the text.

Exact copies: documents whose texts are equal once every run of whitespace is one space share the
sha1 of that normalised text (a dict of digests, so it streams over any corpus).

Near-duplicates: licences and copied headers repeat with small edits (another copyright line). A
prefix hash is not enough: many code files start with the same licence header yet differ after
it. So each text gets a MinHash signature (``datasketch``) over its word 5-gram shingles;
documents sharing a band of it (LSH) are compared, and a document whose estimated Jaccard
similarity to a group's first member (its "leader") is >= 0.7 joins that group. Comparing with
the leader, not with any member, keeps groups from chaining into one blob (a file holding two
licences would otherwise join every MIT and every BSD licence into one group). Documents are
visited in the order given, so the earliest document names its group, and a document with no
near-duplicate keeps its own group.
"""
from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasketch import LeanMinHash

DEDUP_MODES = ("exact", "near", "none")
NEAR_DUPLICATE_JACCARD = 0.7
_SHINGLE_WORDS = 5
# 128 permutations: with 64, the estimate's standard error (0.06 near 0.7) let a licence followed by
# as much unrelated text (true Jaccard 0.64 to the licence) pass 0.7. Rows of 4 make a pair at 0.7 a
# candidate with probability 1 - (1 - 0.7^4)^32 > 0.9998.
_MINHASH_BANDS, _MINHASH_ROWS = 32, 4
_NUM_PERM = _MINHASH_BANDS * _MINHASH_ROWS
_MINHASH_SEED = 1
# Pinned rather than datasketch's default, so a new default cannot silently change the groups.
_MINHASH_SCHEME = "affine32"


# datasketch is imported where it is used: it imports scipy.integrate (about a second), and many jobs
# import this module through pndecomp.corpus, while only near-duplicate grouping needs it.
@functools.cache
def _permutations():
    """Drawn once: MinHash draws them from its seed on every construction."""
    from datasketch import MinHash

    return MinHash(num_perm=_NUM_PERM, seed=_MINHASH_SEED, scheme=_MINHASH_SCHEME).permutations


def normalised_text_digest(text: str) -> bytes:
    """sha1 of the text with its whitespace runs made single spaces: copies that differ only in
    line breaks, indentation or trailing spaces share it."""
    return hashlib.sha1(" ".join(text.split()).encode("utf-8")).digest()


def minhash_signature(text: str) -> LeanMinHash:
    """The MinHash of the text's lower-cased word 5-grams (all its words when it has fewer than five;
    the whole text when it has no word). datasketch hashes shingles with sha1, so signatures do
    not depend on the process (PYTHONHASHSEED)."""
    from datasketch import LeanMinHash, MinHash

    words = re.findall(r"\w+", text.lower()) or [text]
    width = min(_SHINGLE_WORDS, len(words))
    shingles = {" ".join(words[i:i + width]).encode("utf-8") for i in range(len(words) - width + 1)}
    signature = MinHash(_NUM_PERM, _MINHASH_SEED, permutations=_permutations(), scheme=_MINHASH_SCHEME)
    signature.update_batch(shingles)  # a minimum: the set's order does not matter
    return LeanMinHash(signature)


class _NearDuplicateIndex:
    """Leader-based near-duplicate grouping over texts in the order they are offered.

    Memory grows with the number of leaders (texts near no earlier leader): each keeps its
    signature and its 32 LSH band entries, about 10 kB.
    """

    def __init__(self) -> None:
        from datasketch import MinHashLSH

        self._lsh = MinHashLSH(threshold=NEAR_DUPLICATE_JACCARD, num_perm=_NUM_PERM,
                               params=(_MINHASH_BANDS, _MINHASH_ROWS))
        self._leaders: list[LeanMinHash] = []  # signatures; a leader's number is its LSH key

    def __len__(self) -> int:
        return len(self._leaders)

    def leader_of(self, text: str) -> int:
        """The number of the leader the text joins: the earlier leader most similar to it (at least the
        threshold; ties go to the earliest), else the text itself, as the next leader (``len(self)``)."""
        signature = minhash_signature(text)
        candidates = sorted(self._lsh.query(signature))
        similarity = {i: signature.jaccard(self._leaders[i]) for i in candidates}
        similar = [i for i in candidates if similarity[i] >= NEAR_DUPLICATE_JACCARD]
        if similar:
            return max(similar, key=similarity.__getitem__)
        self._lsh.insert(len(self._leaders), signature, check_duplication=False)
        self._leaders.append(signature)
        return len(self._leaders) - 1


class DuplicateGroups:
    """The split group of each document of a stream, by ``mode``: ``exact`` gives every copy (same
    text up to whitespace) the group of the first document of that text; ``near`` also gives a
    near-duplicate the group of its leader; ``none`` keeps every document's own group.

    Memory: a sha1 digest per distinct text and a group name per group-founding document (about
    200 bytes a document); ``near`` adds about 10 kB per leader.
    """

    def __init__(self, mode: str):
        if mode not in DEDUP_MODES:
            raise ValueError(f"dedup mode is {mode!r}; valid: {list(DEDUP_MODES)}")
        self.mode = mode
        self._near = _NearDuplicateIndex() if mode == "near" else None
        # Founders: the documents whose group a duplicate takes. With ``near`` they are the index's
        # leaders, numbered alike (a founder is added exactly when the index adds a leader).
        self._founder_groups: list[str] = []
        self._founder_by_digest: dict[bytes, int] = {}
        self._duplicates: Counter[int] = Counter()  # founder -> documents that took its group

    def group_of(self, group: str, text: str) -> str:
        """The document's split group; ``group`` is its own (its doc id, or its group field)."""
        if self.mode == "none":
            return group
        digest = normalised_text_digest(text)
        founder = self._founder_by_digest.get(digest)
        if founder is None:
            founder = self._near.leader_of(text) if self._near is not None else len(self._founder_groups)
            self._founder_by_digest[digest] = founder
            if founder == len(self._founder_groups):
                self._founder_groups.append(group)
                return group
        self._duplicates[founder] += 1
        return self._founder_groups[founder]

    def counts(self) -> dict:
        """The mode, and of the documents seen so far the groups holding duplicates and the documents in them."""
        return {"mode": self.mode, "groups": len(self._duplicates),
                "documents": sum(self._duplicates.values()) + len(self._duplicates)}


def near_duplicate_groups(doc_ids: list[str], texts: list[str]) -> list[str]:
    """The group of each document, visiting them in doc id order: the doc id of its group's leader
    (itself if it leads), so a group is named by its smallest doc id."""
    deduplicated = DuplicateGroups("near")
    in_id_order = sorted(range(len(doc_ids)), key=doc_ids.__getitem__)
    groups = {i: deduplicated.group_of(doc_ids[i], texts[i]) for i in in_id_order}
    return [groups[i] for i in range(len(doc_ids))]
