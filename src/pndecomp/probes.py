"""Linear probes on h, h_mean, ĥ, r and [ĥ, r] at the last window position (docs/method.md §6).

A probe is StandardScaler (fit on train only) → multinomial logistic regression (lbfgs) with
class-balanced weights; the L2 strength C is chosen on val by macro-F1 and the model trained
on train with that C is scored on test.

F1 convention: scores use ``labels=`` the classes of train ∪ the scored split, with
``zero_division=nan``. So a class that occurs in the scored split but is never predicted
(or only occurs there, unseen in train) scores F1 = 0 and pulls the macro average down,
rather than being dropped; a train class that is neither present in nor predicted on the
scored split has no defined F1 and is left out of the macro average. Micro-F1 over these
labels equals accuracy.

Small test classes: a class with fewer than ``min_test_per_class`` test windows (absent ones
included) is left out of the test macro average, with a warning, and counted in
``n_classes_excluded``; its windows stay in the test set, so micro-F1 and the other classes' F1
still see them. Train and val are unchanged.

Intervals: :func:`resampled_macro_f1` recomputes test macro-F1 on bootstrap resamples of the test
windows by split unit (:mod:`pndecomp.bootstrap`: the near-duplicate group) from the kept test
predictions (no refit), over the same classes as the point estimate.
"""
from __future__ import annotations

import logging

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from .bootstrap import grouped_sums

log = logging.getLogger(__name__)


def _plain(value):
    """numpy scalar → Python scalar, so class counts print cleanly."""
    return value.item() if isinstance(value, np.generic) else value


def make_probe(C: float, *, seed: int = 0, max_iter: int = 1000) -> Pipeline:
    """Standardise (with the statistics of whatever it is fit on) → L2 logistic regression with
    class-balanced weights (n_samples / (n_classes · count_c))."""
    return Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "logreg",
                # lbfgs fits one multinomial (softmax) model for > 2 classes.
                LogisticRegression(
                    C=C, solver="lbfgs", class_weight="balanced",
                    max_iter=max_iter, random_state=seed,
                ),
            ),
        ]
    )


def f1_scores(y_true, y_pred, labels) -> tuple[float, float]:
    """(macro-F1, micro-F1) over ``labels``; see the module docstring for the convention."""
    kwargs = dict(labels=list(labels), zero_division=np.nan)
    macro = f1_score(y_true, y_pred, average="macro", **kwargs)
    micro = f1_score(y_true, y_pred, average="micro", **kwargs)
    return float(macro), float(micro)


def _union_labels(*label_arrays) -> np.ndarray:
    return np.unique(np.concatenate([np.asarray(y) for y in label_arrays]))


def small_test_classes(y_train, y_test, min_test_per_class: int) -> list:
    """The classes of train ∪ test with fewer than ``min_test_per_class`` test windows, sorted."""
    classes = _union_labels(y_train, y_test)
    support = {label: int(np.sum(np.asarray(y_test) == label)) for label in classes}
    return [_plain(label) for label in classes if support[label] < min_test_per_class]


def fit_and_score(
    X_train, y_train, X_val, y_val, X_test, y_test,
    *,
    c_grid=(0.01, 0.1, 1.0, 10.0),
    seed: int = 0,
    max_iter: int = 1000,
    min_test_per_class: int = 0,
) -> dict:
    """Fit one probe, choose C on val by macro-F1 (ties → smaller C), score on test.

    Returns {"C", "val_macro_f1", "test_macro_f1", "test_micro_f1", "n_train", "n_val",
    "n_test", "n_classes", "n_classes_excluded", "test_predictions", "test_macro_labels"};
    ``n_classes`` counts the classes in train, ``n_classes_excluded`` the classes left out of the
    test macro average for having fewer than ``min_test_per_class`` test windows (0 keeps every
    class), ``test_predictions`` [n_test] are the chosen probe's test predictions and
    ``test_macro_labels`` the classes the test macro-F1 averages over (what
    :func:`resampled_macro_f1` needs for intervals without a refit).
    """
    # fp16 hidden states would otherwise be standardised and stored in fp16.
    X_train, X_val, X_test = (np.asarray(X, dtype=np.float64) for X in (X_train, X_val, X_test))
    y_train, y_val, y_test = np.asarray(y_train), np.asarray(y_val), np.asarray(y_test)
    classes, class_sizes = np.unique(y_train, return_counts=True)
    if len(classes) < 2:
        counts = {_plain(c): int(n) for c, n in zip(classes, class_sizes)}
        raise ValueError(f"a probe needs >= 2 classes in train; train class counts: {counts}")
    val_labels = _union_labels(y_train, y_val)

    best_C, best_f1, best_model = None, -np.inf, None
    # Ascending C, and only a strictly better score replaces the best: ties → smaller C.
    for C in sorted(c_grid):
        model = make_probe(C, seed=seed, max_iter=max_iter).fit(X_train, y_train)
        val_f1, _ = f1_scores(y_val, model.predict(X_val), val_labels)
        if val_f1 > best_f1:
            best_C, best_f1, best_model = C, val_f1, model
    if best_model is None:
        raise ValueError("val macro-F1 is undefined (empty val split?)")

    test_labels = _union_labels(y_train, y_test)
    excluded = small_test_classes(y_train, y_test, min_test_per_class)
    if excluded:
        support = {label: int(np.sum(y_test == label)) for label in excluded}
        log.warning("test classes with fewer than %d windows are left out of the test macro-F1: %s",
                    min_test_per_class, support)
    macro_labels = [label for label in test_labels if _plain(label) not in set(excluded)]
    test_predictions = best_model.predict(X_test)
    _, test_micro = f1_scores(y_test, test_predictions, test_labels)
    test_macro = f1_scores(y_test, test_predictions, macro_labels)[0] if macro_labels else float("nan")
    return {
        "C": float(best_C),
        "val_macro_f1": float(best_f1),
        "test_macro_f1": test_macro,
        "test_micro_f1": test_micro,
        "n_train": int(len(y_train)),
        "n_val": int(len(y_val)),
        "n_test": int(len(y_test)),
        "n_classes": len(classes),
        "n_classes_excluded": len(excluded),
        "test_predictions": test_predictions,
        "test_macro_labels": [_plain(label) for label in macro_labels],
    }


def resampled_macro_f1(y_true, y_pred, labels, group_of_row: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Macro-F1 over ``labels`` of every bootstrap resample: [n_resamples].

    ``counts`` [n_resamples, n_groups] says how often each group (bootstrap unit) of the rows is drawn
    (:func:`pndecomp.bootstrap.resample_counts`); a resample holds every row of group g counts[g]
    times. Per-class TP, FP and FN are sums over rows, so they are per-group sums weighted by the
    counts, and F1_c = 2 TP / (2 TP + FP + FN) -- the same number :func:`f1_scores` gives on the
    resampled rows (a class with no support and no predictions in a resample is left out, NaN when
    every class is).
    """
    y_true, y_pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    n_resamples, n_groups = counts.shape
    if not len(labels):
        return np.full(n_resamples, np.nan)
    label_array = np.empty(len(labels), dtype=object)
    label_array[:] = list(labels)
    is_true = y_true[:, None] == label_array[None, :]  # [rows, classes]
    is_pred = y_pred[:, None] == label_array[None, :]
    tp, fp, fn = (counts @ grouped_sums(part, group_of_row, n_groups)
                  for part in (is_true & is_pred, ~is_true & is_pred, is_true & ~is_pred))
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.full(denominator.shape, np.nan), where=denominator > 0)
    defined = np.isfinite(f1).any(axis=1)
    out = np.full(n_resamples, np.nan)
    out[defined] = np.nanmean(f1[defined], axis=1)
    return out
