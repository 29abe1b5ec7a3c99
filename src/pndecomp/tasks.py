"""Probe tasks (SPEC §6): the single place to add one.

A task labels a probe window from its document and tokens; windows labelled ``None`` are not used
by that task. Its caps bound how many windows each probe split keeps, per class or in all; a task
not listed under ``probes.caps`` in the config takes the caps given here. The figure is the file
stem its heatmap is drawn to (``figures/<figure>.png``).

Adding a task is one :class:`ProbeTask` in :data:`TASKS` plus the task's name in the config's
``probes.tasks`` (and, optionally, its caps under ``probes.caps``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .corpus import Document
from .tokentypes import token_type


@dataclass(frozen=True)
class ProbeWindow:
    """What a label function may read: the window's document, its token ids, and the tokenizer's decoder."""

    document: Document
    tokens: np.ndarray  # [T] token ids
    decode: Callable[[list[int]], str]  # token ids -> text: the tokenizer's decode


@dataclass(frozen=True)
class ProbeTask:
    name: str
    label_column: str  # the column of the probe-windows table that holds the label
    label: Callable[[ProbeWindow], str | None]
    cap_kind: Literal["per_class", "total"]
    default_caps: Mapping[str, int]  # {probe split: windows}, when the config gives none
    description: str  # what is probed, for the heatmap's title and the report
    figure: str  # file stem of its heatmap
    source: str = ""  # where the task comes from, appended to the report caption
    needs_document_label: bool = False  # reads Document.label: the corpus needs a label field

    @property
    def title(self) -> str:
        return f"{self.description} (test macro-F1)"

    @property
    def caption(self) -> str:
        return (f"{self.description}: test macro-F1 of a linear probe on each representation at the last window "
                f"position, per layer{self.source}.")


def _domain(window: ProbeWindow) -> str | None:
    return window.document.label


def _next_token_type(window: ProbeWindow) -> str:
    """The type of the last token, decoded on its own: what ĥ_T predicts and r_T adds to."""
    return token_type(window.decode([int(window.tokens[-1])]))


def _in_code_comment(window: ProbeWindow) -> str:
    """Whether the last token ends inside a ``#`` comment: a ``#`` earlier on its line, or in it."""
    last_line = window.decode(window.tokens.tolist()).rsplit("\n", 1)[-1]
    return "comment" if "#" in last_line else "code"


TASKS: dict[str, ProbeTask] = {task.name: task for task in (
    ProbeTask("domain", "domain", _domain, "per_class", {"probe_train": 4000, "probe_val": 500, "probe_test": 500},
              "Domain probe", "fig5", " (figure 5)", needs_document_label=True),
    ProbeTask("next_token_type_8", "next_token_type", _next_token_type, "total",
              {"probe_train": 40000, "probe_val": 5000, "probe_test": 5000},
              "Next-token-type probe (8 classes)", "fig6", " (figure 6)"),
    # An example beyond the paper (README "Extending"): does the state know it is inside a comment?
    ProbeTask("in_code_comment", "code_comment", _in_code_comment, "per_class",
              {"probe_train": 200, "probe_val": 50, "probe_test": 100},
              "Last token inside a # comment", "probe_in_code_comment"),
)}


class UnknownTask(ValueError):
    """A task name with no entry in :data:`TASKS`."""


def get(name: str) -> ProbeTask:
    if name not in TASKS:
        raise UnknownTask(f"probes.tasks: unknown task {name!r}; known tasks are {sorted(TASKS)} "
                          "(add one in src/pndecomp/tasks.py)")
    return TASKS[name]
