"""Token windows (docs/method.md §2): T consecutive tokens from one document, split by document.

Every window is keyed by ``<doc_id>@<start>``; its split comes from its document's split key, and
which windows are kept when a split has more than it needs is decided by a hash of that key, so
the result does not depend on corpus order.
"""
from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from .corpus import Document
from .splits import PREDICTOR_SPLITS, PROBE_SPLITS, split_of, unit_hash
from .tasks import ProbeTask, ProbeWindow, control_labels
from .tasks import get as get_task

log = logging.getLogger(__name__)


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


TOKENIZE_BATCH = 64  # documents per tokenizer call: a fast tokenizer encodes a batch on all cores


def tokenized(documents: Iterable[Document], tokenizer) -> Iterator[tuple[Document, list[int]]]:
    """(document, its token ids without special tokens), tokenizing ``TOKENIZE_BATCH`` documents a call."""
    iterator = iter(documents)
    while batch := list(itertools.islice(iterator, TOKENIZE_BATCH)):
        yield from zip(batch, tokenizer([doc.text for doc in batch], add_special_tokens=False)["input_ids"])


def build_windows(documents: Iterable[Document], tokenizer, *, length: int, per_document: int,
                  prepend_bos: bool, fractions: Mapping[str, float], seed: int,
                  tasks: Sequence[ProbeTask],
                  on_document: Callable[[Document, str, list[int]], None] | None = None) -> tuple[pd.DataFrame, dict]:
    """Every candidate window of every long-enough document, with its split and each task's label.

    ``on_document(document, split, token ids)`` is called for every long-enough document (the stream-mode
    token store keeps the predictor_train documents' ids from here: one tokenization serves both).

    A control task's labels (:func:`pndecomp.tasks.control_labels`) are drawn after its base task
    has labelled every candidate window; the base labels are computed even when the base task is
    not among ``tasks`` (and then not kept as a column).
    """
    controls = [task for task in tasks if task.control is not None]
    labelled = {task.name: task for task in tasks if task.control is None}
    for task in controls:
        labelled.setdefault(task.control.base, get_task(task.control.base))
    # With prepend_bos every window is BOS + (T − 1) document tokens; ``start`` is in document tokens.
    bos = []
    if prepend_bos:
        if tokenizer.bos_token_id is None:
            raise ValueError("windows.prepend_bos is true but the tokenizer has no BOS token")
        bos = [tokenizer.bos_token_id]
    span = length - len(bos)
    rows = []
    counts = Counter()
    for doc, ids in tokenized(documents, tokenizer):
        counts["documents"] += 1
        if len(ids) < span:
            counts["skipped_short"] += 1
            continue
        split = split_of(doc.group, fractions, seed)
        if on_document is not None:
            on_document(doc, split, ids)
        for start in window_starts(len(ids), span, per_document, seed, doc.doc_id):
            tokens = np.asarray([*bos, *ids[start:start + span]], dtype=np.int32)
            window = ProbeWindow(doc, tokens, tokenizer.decode)
            window_id = f"{doc.doc_id}@{start}"
            rows.append({
                "window_id": window_id, "doc_id": doc.doc_id, "group": doc.group, "split": split,
                "start": start, **{task.label_column: task.label(window) for task in labelled.values()},
                "order_key": unit_hash("select", seed, window_id), "tokens": tokens,
            })
    frame = pd.DataFrame(rows, columns=["window_id", "doc_id", "group", "split", "start",
                                        *[task.label_column for task in labelled.values()], "order_key", "tokens"])
    for task in controls:
        base = labelled[task.control.base]
        units = [task.control.unit_of(tokens) for tokens in frame["tokens"]]  # a unit that recurs across splits
        frame[task.label_column] = control_labels(units, frame[base.label_column].tolist(), seed=seed,
                                                  task=task.name)
    columns = ["window_id", "doc_id", "group", "split", "start", *[task.label_column for task in tasks], "order_key",
               "tokens"]
    return frame[columns], dict(counts)


def select_for_task(frame: pd.DataFrame, *, label_column: str, order_column: str,
                    per_class_cap: int | None = None, total_cap: int | None = None) -> pd.Index:
    """The rows of ``frame`` (one split's probe windows) that a probe task uses.

    Rows are taken in ascending ``order_column`` (a stable hash in [0, 1), ties broken by
    index), skipping null labels, keeping at most ``per_class_cap`` per label and then at
    most ``total_cap`` overall. ``None`` means no cap. Returns the selected index in that
    order, so the result depends only on the rows' contents, not on frame order.
    """
    for name, cap in (("per_class_cap", per_class_cap), ("total_cap", total_cap)):
        if cap is not None and cap < 0:
            raise ValueError(f"{name} must be >= 0 or None, got {cap}")
    labelled = frame[frame[label_column].notna()]
    if labelled[order_column].isna().any():
        raise ValueError(f"column {order_column!r} has nulls; every row needs an order value")
    # Stable sorts: index first, then order value, so equal order values keep index order.
    ordered = labelled.sort_index(kind="mergesort").sort_values(order_column, kind="mergesort")
    if per_class_cap is not None:
        rank_in_class = ordered.groupby(label_column, sort=False).cumcount()
        ordered = ordered[rank_in_class < per_class_cap]
    if total_cap is not None:
        ordered = ordered.iloc[:total_cap]
    return ordered.index


def select_windows(candidates: pd.DataFrame, *, predictor_counts: Mapping[str, int],
                   probe_caps: Mapping[str, Mapping[str, int]], tasks: Sequence[ProbeTask]) -> dict[str, pd.DataFrame]:
    """The windows each split keeps.

    Predictor splits keep their first ``predictor_counts[split]`` windows in hash order. The probe
    splits keep the union of what the probe tasks select (each window carries every task's label),
    with a boolean column per task telling which windows belong to it; ``probe_caps`` is
    {task: {split: windows}}, per class or in all as the task says. A control task takes its base
    task's windows (the base must be among ``tasks``). Other tasks are served in order, each
    preferring windows already kept (see docs/choices.md: with both tasks, the next-token-type windows
    come from the domain windows when there are enough of them).
    """
    selected = {}
    for split, count in predictor_counts.items():
        part = candidates[candidates["split"] == split].sort_values(["order_key", "window_id"])
        selected[split] = part.head(count).reset_index(drop=True)
    probe_parts = []
    # A control task probes exactly its base task's windows, so F1 − F1_control compares the same examples.
    controls = [task for task in tasks if task.control is not None]
    for split in PROBE_SPLITS:
        part = candidates[candidates["split"] == split]
        membership = {}
        for task in (task for task in tasks if task.control is None):
            cap = {task.cap_kind: probe_caps[task.name][split]}
            # Later tasks draw first from windows an earlier task already keeps (in their hash
            # order), so the tasks share LM passes instead of adding windows.
            kept = np.logical_or.reduce(list(membership.values())) if membership else np.zeros(len(part), bool)
            ranked = part.assign(_rank=np.where(kept, 0.0, 1.0) + part["order_key"])
            index = select_for_task(ranked, label_column=task.label_column, order_column="_rank",
                                    per_class_cap=cap.get("per_class"), total_cap=cap.get("total"))
            membership[task.name] = part.index.isin(index)
        for task in controls:
            membership[task.name] = membership[task.control.base]
        keep = np.logical_or.reduce(list(membership.values())) if membership else np.zeros(len(part), bool)
        part = part.assign(**{f"in_{name}": flags for name, flags in membership.items()})[keep]
        probe_parts.append(part.sort_values(["order_key", "window_id"]))
    selected["probe"] = pd.concat(probe_parts, ignore_index=True)
    return selected


def class_counts(probe: pd.DataFrame, task: ProbeTask) -> dict[str, dict[str, int]]:
    """{probe split: {label: windows}} of the windows a task uses, labels sorted."""
    member = probe[probe[f"in_{task.name}"]]
    return {split: {str(k): int(v) for k, v in
                    member.loc[member["split"] == split, task.label_column].value_counts().sort_index().items()}
            for split in PROBE_SPLITS}


def summarize(selected: Mapping[str, pd.DataFrame], counts: Mapping[str, int], tasks: Sequence[ProbeTask],
              duplicates: Mapping) -> dict:
    """Counts a user checks first: documents seen, skipped and duplicated (``DocumentStream.duplicates``),
    windows per split and class."""
    return {"documents": counts.get("documents", 0), "skipped_short_documents": counts.get("skipped_short", 0),
            "duplicates": dict(duplicates),
            "windows": {name: len(frame) for name, frame in selected.items()},
            "probe_classes": {task.name: class_counts(selected["probe"], task) for task in tasks}}


class NotEnoughWindows(ValueError):
    """The corpus cannot supply the windows the config asks for; the message lists what it has."""


def check_selection(selected: Mapping[str, pd.DataFrame], *, length: int, requested: Mapping[str, int],
                    tasks: Sequence[ProbeTask], probe_caps: Mapping[str, Mapping[str, int]],
                    counts: Mapping[str, int] | None = None) -> None:
    """Fail before any LM work when a split is too small for the stages that read it.

    ``requested`` is the config's windows per predictor split; ``counts`` (from :func:`build_windows`)
    adds how many documents were too short to the message.
    """
    # Var and Spearman need two eval windows, the learning curve two val windows; train.eval_windows is
    # checked against the config.
    eval_needed = 2
    available = {split: len(selected[split]) for split in PREDICTOR_SPLITS}
    if (available["predictor_train"] < 1 or available["predictor_eval"] < eval_needed
            or available["predictor_val"] < eval_needed):
        short = (f" ({counts.get('skipped_short', 0)} of {counts.get('documents', 0)} documents are shorter than "
                 f"windows.length = {length} tokens)" if counts is not None else "")
        raise NotEnoughWindows(
            f"the corpus yields {available} windows of {length} tokens for the predictor splits{short}; "
            f"windows.predictor_eval and predictor_val need at least {eval_needed} and predictor_train at "
            "least 1: add documents, lower windows.length, raise windows.per_document or the split fractions")
    for split, n_available in available.items():
        if n_available < requested[split]:
            log.warning("windows.%s asks for %d windows; the corpus yields %d", split, requested[split], n_available)
    for task in tasks:
        per_split = class_counts(selected["probe"], task)
        if len(per_split["probe_train"]) < 2 or not per_split["probe_val"] or not per_split["probe_test"]:
            raise NotEnoughWindows(
                f"probe task {task.name!r} needs at least 2 classes in probe_train and windows in probe_val and "
                f"probe_test; per-class window counts are {per_split}: add documents or raise "
                "windows.split_fractions of the probe splits")
        if task.control is None:  # a control's classes are random labels, its caps its base's
            _warn_below_caps(task, per_split, probe_caps[task.name])


def _warn_below_caps(task: ProbeTask, per_split: Mapping[str, Mapping[str, int]], caps: Mapping[str, int]) -> None:
    """Caps are upper bounds; say where the corpus falls short of them, since F1 gets noisier."""
    for split, classes in per_split.items():
        if task.cap_kind == "per_class":
            short = {label: n for label, n in classes.items() if n < caps[split]}
            if short:
                log.warning("probe task %s, %s: classes below the cap of %d windows: %s", task.name, split,
                            caps[split], short)
        elif sum(classes.values()) < caps[split]:
            log.warning("probe task %s, %s: %d windows, below the cap of %d", task.name, split,
                        sum(classes.values()), caps[split])


def tokens_array(frame: pd.DataFrame) -> np.ndarray:
    """The windows' token ids as one [n_windows, T] int64 array."""
    if len(frame) == 0:
        return np.zeros((0, 0), dtype=np.int64)
    return np.stack([np.asarray(t, dtype=np.int64) for t in frame["tokens"]])

