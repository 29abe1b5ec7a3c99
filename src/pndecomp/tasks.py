"""Probe tasks (docs/method.md §6): the single place to add one.

A task labels a probe window from its document and tokens; windows labelled ``None`` are not used
by that task. Its caps bound how many windows each probe split keeps, per class or in all; a task
not listed under ``probes.caps`` in the config takes the caps given here. The figure is the file
stem its heatmap is drawn to (``figures/<figure>.png``).

Adding a task is one :class:`ProbeTask` in :data:`TASKS` plus the task's name in the config's
``probes.tasks`` (and, optionally, its caps under ``probes.caps``).

A **control task** (Hewitt & Liang 2019, "Designing and interpreting probes with control tasks")
has no label function of its own: its :class:`Control` names a base task and a unit (the window's
last token id, the only unit offered: see :data:`RECURRING_UNITS`), and every unit gets a random
label drawn from the empirical distribution of the base task's labels over windows
(:func:`control_labels`, called by :func:`pndecomp.windows.build_windows` once the base labels of
all candidate windows are known). The unit recurs across the probe splits, so a probe that
memorises units (unit → label, as seen in probe_train) beats chance on the control's test split,
and ``selectivity`` = F1 of the task − F1 of its control says how much of the F1 the representation
gives beyond what a probe gets by memorising units.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .corpus import Document
from .splits import unit_hash
from .tokentypes import token_type


@dataclass(frozen=True)
class ProbeWindow:
    """What a label function may read: the window's document, its token ids, and the tokenizer's decoder."""

    document: Document
    tokens: np.ndarray  # [T] token ids
    decode: Callable[[list[int]], str]  # token ids -> text: the tokenizer's decode


# The units a control task may draw its random labels by. Only units that recur across the probe
# splits are offered: the splits are document- (near-duplicate-group-) disjoint, so a unit such as
# the document or its group never has a test window whose label was seen in probe_train. A control
# over such a unit is at chance by construction (for any representation), and its "selectivity" is
# F1 minus a constant. Token ids occur in every split, as Hewitt & Liang's word types do.
ControlUnit = Literal["last_token"]


def _last_token(tokens: np.ndarray) -> int:
    return int(tokens[-1])


RECURRING_UNITS: dict[str, Callable[[np.ndarray], int]] = {"last_token": _last_token}  # unit -> its key of a window


@dataclass(frozen=True)
class Control:
    """What makes a task a control task: the base task whose labels it shuffles, and the unit that
    carries one random label (``last_token``: the window's last token id). A unit that cannot recur
    across the probe splits (e.g. the document) is refused: see :data:`RECURRING_UNITS`."""

    base: str
    unit: ControlUnit

    def __post_init__(self):
        if self.unit not in RECURRING_UNITS:
            raise ValueError(f"control unit {self.unit!r} of a control of {self.base!r}: a control task needs a "
                             f"unit that recurs across the probe splits, one of {sorted(RECURRING_UNITS)} (the "
                             "splits are document-disjoint, so a per-document label is never seen in training)")

    def unit_of(self, tokens: np.ndarray):
        """The unit of a window with these token ids (its key in :func:`control_labels`)."""
        return RECURRING_UNITS[self.unit](tokens)


@dataclass(frozen=True)
class ProbeTask:
    name: str
    label_column: str  # the column of the probe-windows table that holds the label
    label: Callable[[ProbeWindow], str | None] | None  # None for a control task (labels come from its base)
    cap_kind: Literal["per_class", "total"]
    default_caps: Mapping[str, int]  # {probe split: windows}, when the config gives none
    description: str  # what is probed, for the heatmap's title and the report
    figure: str  # file stem of its heatmap
    source: str = ""  # where the task comes from, appended to the report caption
    needs_document_label: bool = False  # reads Document.label: the corpus needs a label field
    control: Control | None = None  # set for a control task

    @property
    def title(self) -> str:
        return f"{self.description} (test macro-F1)"

    @property
    def caption(self) -> str:
        return (f"{self.description}: test macro-F1 of a linear probe on each representation at the last window "
                f"position, per layer{self.source}. With metrics.bootstrap > 0 each cell also shows the 95 % "
                "bootstrap interval (test windows resampled by split unit, the near-duplicate group), and a "
                "hatched ĥ cell with a ~ after its value marks a layer where the paired interval of ĥ − r "
                "contains 0 (ĥ and r not distinguishable at this test size).")


def _domain(window: ProbeWindow) -> str | None:
    return window.document.label


def _next_token_type(window: ProbeWindow) -> str:
    """The type of the last token, decoded on its own: what ĥ_T predicts and r_T adds to."""
    return token_type(window.decode([int(window.tokens[-1])]))


def _in_code_comment(window: ProbeWindow) -> str:
    """Whether the last token ends inside a ``#`` comment: a ``#`` earlier on its line, or in it."""
    last_line = window.decode(window.tokens.tolist()).rsplit("\n", 1)[-1]
    return "comment" if "#" in last_line else "code"


def control_labels(units: Sequence, base_labels: Sequence, *, seed: int, task: str) -> list[str | None]:
    """The control label of every row: each distinct unit draws one label from the empirical
    distribution of the base labels over rows (windows), as Hewitt & Liang draw a word type's control
    tag from the tag distribution over tokens, so the control has the real task's class balance. The
    draw is the inverse CDF of a stable hash of (task, seed, unit) -- never Python's ``hash()``, so the
    labels are the same in every process. Rows whose base label is missing (None/NaN) get None: a
    control uses the windows its base task uses.
    """
    units = [str(unit) for unit in units]
    present = [label is not None and label == label for label in base_labels]  # NaN != NaN
    observed = [str(label) for label, ok in zip(base_labels, present) if ok]
    if not observed:
        return [None] * len(units)
    first_label = dict.fromkeys(unit for unit, ok in zip(units, present) if ok)
    classes, sizes = np.unique(np.asarray(observed, dtype=str), return_counts=True)
    cdf = np.cumsum(sizes) / sizes.sum()
    draw = {unit: str(classes[min(int(np.searchsorted(cdf, unit_hash("control", task, seed, unit), side="right")),
                                  len(classes) - 1)])
            for unit in first_label}
    return [draw[unit] if ok else None for unit, ok in zip(units, present)]


def _control_of(base: ProbeTask, unit: ControlUnit, label_column: str, what: str) -> ProbeTask:
    """A control task of ``base``: same cap kind and default caps, its own label column and figure."""
    return ProbeTask(f"{base.name}_control", label_column, None, base.cap_kind, base.default_caps,
                     f"{base.description}, control task ({what})", f"probe_{base.name}_control",
                     f" (control task of {base.name}, Hewitt & Liang 2019)",
                     needs_document_label=base.needs_document_label, control=Control(base.name, unit))


_BASE_TASKS: tuple[ProbeTask, ...] = (
    ProbeTask("domain", "domain", _domain, "per_class", {"probe_train": 4000, "probe_val": 500, "probe_test": 500},
              "Domain probe", "fig5", " (figure 5)", needs_document_label=True),
    ProbeTask("next_token_type_8", "next_token_type", _next_token_type, "total",
              {"probe_train": 40000, "probe_val": 5000, "probe_test": 5000},
              "Next-token-type probe (8 classes)", "fig6", " (figure 6)"),
    # An example beyond the paper (docs/development.md, "Extending"): does the state know it is inside a comment?
    ProbeTask("in_code_comment", "code_comment", _in_code_comment, "per_class",
              {"probe_train": 200, "probe_val": 50, "probe_test": 100},
              "Last token inside a # comment", "probe_in_code_comment"),
)
_BY_NAME = {task.name: task for task in _BASE_TASKS}

TASKS: dict[str, ProbeTask] = {task.name: task for task in (
    *_BASE_TASKS,
    # Control tasks (Hewitt & Liang 2019): a random domain, and a random type, per last token id.
    _control_of(_BY_NAME["domain"], "last_token", "domain_control", "random domain per last token id"),
    _control_of(_BY_NAME["next_token_type_8"], "last_token", "next_token_type_control",
                "random type per last token id"),
)}


class UnknownTask(ValueError):
    """A task name with no entry in :data:`TASKS`."""


def get(name: str) -> ProbeTask:
    if name not in TASKS:
        raise UnknownTask(f"probes.tasks: unknown task {name!r}; known tasks are {sorted(TASKS)} "
                          "(add one in src/pndecomp/tasks.py)")
    return TASKS[name]


def control_for(name: str, configured: Sequence[str]) -> str | None:
    """The first configured control task of task ``name``, if any (its F1 gives ``selectivity``)."""
    for other in configured:
        control = get(other).control
        if control is not None and control.base == name:
            return other
    return None
