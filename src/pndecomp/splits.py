"""Document-level splits decided by a stable hash (docs/method.md §2).

A document's split depends only on its split key (its near-duplicate group, or its id), the
split fractions and the seed -- never on corpus order or Python's salted ``hash()``.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping

# Order matters: the cumulative fractions are laid out in this order on [0, 1). predictor_val chooses
# settings and draws the learning curve; predictor_eval is scored once, at the end.
SPLITS = ("predictor_train", "predictor_val", "predictor_eval", "probe_train", "probe_val", "probe_test")
PREDICTOR_SPLITS = ("predictor_train", "predictor_val", "predictor_eval")
PROBE_SPLITS = ("probe_train", "probe_val", "probe_test")


def unit_hash(*parts: object) -> float:
    """A deterministic number in [0, 1) from the given parts (sha1, first 8 bytes)."""
    digest = hashlib.sha1("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(split_key: str, fractions: Mapping[str, float], seed: int) -> str:
    """The split a document belongs to.

    ``fractions`` maps every name in :data:`SPLITS` to a non-negative share; shares are
    normalised, so they need not sum to one.
    """
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split name(s) {sorted(unknown)}; valid: {list(SPLITS)}")
    total = sum(fractions.get(name, 0.0) for name in SPLITS)
    if total <= 0:
        raise ValueError(f"split fractions {dict(fractions)} must have a positive sum")
    u = unit_hash("split", seed, split_key) * total
    cumulative = 0.0
    for name in SPLITS:
        cumulative += fractions.get(name, 0.0)
        if u < cumulative:
            return name
    return SPLITS[-1]  # only reachable through float rounding at the top end
