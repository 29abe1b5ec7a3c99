"""Token windows (SPEC §2): T consecutive tokens from one document, split by document.

Every window is keyed by ``<doc_id>@<start>``; its split comes from its document's split key, and
which windows are kept when a split has more than it needs is decided by a hash of that key, so
the result does not depend on corpus order.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from .corpus import Document
from .probes import select_for_task
from .splits import PROBE_SPLITS, split_of, unit_hash
from .tokentypes import token_type

log = logging.getLogger(__name__)

DOMAIN_TASK = "domain"
TOKEN_TYPE_TASK = "next_token_type_8"
TASK_LABEL_COLUMNS = {DOMAIN_TASK: "domain", TOKEN_TYPE_TASK: "next_token_type"}


def window_starts(n_tokens: int, length: int, per_document: int, seed: int, doc_id: str) -> list[int]:
    """Up to ``per_document`` non-overlapping window starts in a document of ``n_tokens`` tokens.

    The document is cut into ``n_tokens // length`` slots after a random shift; slots are drawn
    without replacement. The RNG is seeded by (seed, doc_id), so a document's windows do not depend
    on which other documents the corpus holds.
    """
    n_slots = n_tokens // length
    if n_slots == 0:
        return []
    rng = np.random.default_rng(int(unit_hash("offset", seed, doc_id) * 2**63))
    shift = int(rng.integers(0, n_tokens - n_slots * length + 1))
    slots = rng.choice(n_slots, size=min(per_document, n_slots), replace=False)
    return sorted(shift + int(slot) * length for slot in slots)


def tokenize(tokenizer, text: str, prepend_bos: bool) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if prepend_bos:
        if tokenizer.bos_token_id is None:
            raise ValueError("windows.prepend_bos is true but the tokenizer has no BOS token")
        ids = [tokenizer.bos_token_id, *ids]
    return ids


def build_windows(documents: Iterable[Document], tokenizer, *, length: int, per_document: int,
                  prepend_bos: bool, fractions: Mapping[str, float], seed: int) -> tuple[pd.DataFrame, dict]:
    """Every candidate window of every long-enough document, with its split and labels."""
    rows = []
    counts = Counter()
    type_of_id: dict[int, str] = {}
    for doc in documents:
        counts["documents"] += 1
        ids = tokenize(tokenizer, doc.text, prepend_bos)
        if len(ids) < length:
            counts["skipped_short"] += 1
            continue
        split = split_of(doc.group, fractions, seed)
        for start in window_starts(len(ids), length, per_document, seed, doc.doc_id):
            tokens = np.asarray(ids[start:start + length], dtype=np.int32)
            last = int(tokens[-1])
            if last not in type_of_id:
                type_of_id[last] = token_type(tokenizer.decode([last]))
            window_id = f"{doc.doc_id}@{start}"
            rows.append({
                "window_id": window_id, "doc_id": doc.doc_id, "group": doc.group, "split": split,
                "start": start, "domain": doc.label, "next_token_type": type_of_id[last],
                "order_key": unit_hash("select", seed, window_id), "tokens": tokens,
            })
    frame = pd.DataFrame(rows, columns=["window_id", "doc_id", "group", "split", "start", "domain",
                                        "next_token_type", "order_key", "tokens"])
    return frame, dict(counts)


def select_windows(candidates: pd.DataFrame, *, predictor_counts: Mapping[str, int],
                   probe_caps: Mapping[str, Mapping[str, Mapping[str, int]]], tasks: Iterable[str]) -> dict[str, pd.DataFrame]:
    """The windows each split keeps.

    Predictor splits keep their first ``predictor_counts[split]`` windows in hash order. The probe
    splits keep the union of what the probe tasks select (each window carries both labels), with a
    boolean column per task telling which windows belong to it. Tasks are served in order, each
    preferring windows already kept (see the README: with both tasks, the next-token-type windows
    come from the domain windows when there are enough of them).
    """
    selected = {}
    for split, count in predictor_counts.items():
        part = candidates[candidates["split"] == split].sort_values(["order_key", "window_id"])
        selected[split] = part.head(count).reset_index(drop=True)
    probe_parts = []
    for split in PROBE_SPLITS:
        part = candidates[candidates["split"] == split]
        membership = {}
        for task in tasks:
            caps = probe_caps[task][split]
            # Later tasks draw first from windows an earlier task already keeps (in their hash
            # order), so the tasks share LM passes instead of adding windows.
            kept = np.logical_or.reduce(list(membership.values())) if membership else np.zeros(len(part), bool)
            ranked = part.assign(_rank=np.where(kept, 0.0, 1.0) + part["order_key"])
            index = select_for_task(ranked, label_column=TASK_LABEL_COLUMNS[task], order_column="_rank",
                                    per_class_cap=caps.get("per_class"), total_cap=caps.get("total"))
            membership[task] = part.index.isin(index)
        keep = np.logical_or.reduce(list(membership.values())) if membership else np.zeros(len(part), bool)
        part = part.assign(**{f"in_{task}": flags for task, flags in membership.items()})[keep]
        probe_parts.append(part.sort_values(["order_key", "window_id"]))
    selected["probe"] = pd.concat(probe_parts, ignore_index=True)
    return selected


def summarize(selected: Mapping[str, pd.DataFrame], counts: Mapping[str, int], tasks: Iterable[str]) -> dict:
    """Counts a user checks first: documents seen and skipped, windows per split and class."""
    summary = {"documents": counts.get("documents", 0), "skipped_short_documents": counts.get("skipped_short", 0),
               "windows": {name: len(frame) for name, frame in selected.items()}, "probe_classes": {}}
    probe = selected["probe"]
    for task in tasks:
        column = TASK_LABEL_COLUMNS[task]
        member = probe[probe[f"in_{task}"]]
        summary["probe_classes"][task] = {
            split: {str(k): int(v) for k, v in member[member["split"] == split][column].value_counts().sort_index().items()}
            for split in PROBE_SPLITS}
    return summary


class NotEnoughWindows(ValueError):
    """The corpus cannot supply the windows the config asks for; the message lists what it has."""


def check_selection(selected: Mapping[str, pd.DataFrame], config: Mapping,
                    counts: Mapping[str, int] | None = None) -> None:
    """Fail before any LM work when a split is too small for the stages that read it.

    ``counts`` (from :func:`build_windows`) adds how many documents were too short to the message.
    """
    length = config["windows"]["length"]
    eval_needed = 2  # Var and Spearman need two windows; train.eval_windows is checked against the config
    available = {split: len(selected[split]) for split in ("predictor_train", "predictor_eval")}
    if available["predictor_train"] < 1 or available["predictor_eval"] < eval_needed:
        short = (f" ({counts.get('skipped_short', 0)} of {counts.get('documents', 0)} documents are shorter than "
                 f"windows.length = {length} tokens)" if counts is not None else "")
        raise NotEnoughWindows(
            f"the corpus yields {available} windows of {length} tokens for the predictor splits{short}; "
            f"windows.predictor_eval needs at least {eval_needed} and predictor_train at "
            "least 1: add documents, lower windows.length, raise windows.per_document or the split fractions")
    for split, n_available in available.items():
        if n_available < config["windows"][split]:
            log.warning("windows.%s asks for %d windows; the corpus yields %d", split, config["windows"][split],
                        n_available)
    probe = selected["probe"]
    for task in config["probes"]["tasks"]:
        column = TASK_LABEL_COLUMNS[task]
        member = probe[probe[f"in_{task}"]]
        per_split = {split: member.loc[member["split"] == split, column].value_counts().to_dict() for split in PROBE_SPLITS}
        if len(per_split["probe_train"]) < 2 or not per_split["probe_val"] or not per_split["probe_test"]:
            raise NotEnoughWindows(
                f"probe task {task!r} needs at least 2 classes in probe_train and windows in probe_val and "
                f"probe_test; per-class window counts are {per_split}: add documents or raise "
                "windows.split_fractions of the probe splits")
        _warn_below_caps(task, per_split, config["probes"])


def _warn_below_caps(task: str, per_split: Mapping[str, Mapping[str, int]], probes: Mapping) -> None:
    """Caps are upper bounds; say where the corpus falls short of them, since F1 gets noisier."""
    for split, classes in per_split.items():
        if task == DOMAIN_TASK:
            short = {label: n for label, n in classes.items() if n < probes["domain_caps"][split]}
            if short:
                log.warning("probe task %s, %s: classes below the cap of %d windows: %s", task, split,
                            probes["domain_caps"][split], short)
        elif sum(classes.values()) < probes["token_type_caps"][split]:
            log.warning("probe task %s, %s: %d windows, below the cap of %d", task, split, sum(classes.values()),
                        probes["token_type_caps"][split])


def tokens_array(frame: pd.DataFrame) -> np.ndarray:
    """The windows' token ids as one [n_windows, T] int64 array."""
    if len(frame) == 0:
        return np.zeros((0, 0), dtype=np.int64)
    return np.stack([np.asarray(t, dtype=np.int64) for t in frame["tokens"]])

