"""Linear probes on h, ĥ, r and [ĥ, r] at the last window position (SPEC §6).

A probe is StandardScaler (fit on train only) → multinomial logistic regression (lbfgs) with
class-balanced weights; the L2 strength C is chosen on val by macro-F1 and the model trained
on train with that C is scored on test.

F1 convention: scores use ``labels=`` the classes of train ∪ the scored split, with
``zero_division=nan``. So a class that occurs in the scored split but is never predicted
(or only occurs there, unseen in train) scores F1 = 0 and pulls the macro average down,
rather than being dropped; a train class that is neither present in nor predicted on the
scored split has no defined F1 and is left out of the macro average. Micro-F1 over these
labels equals accuracy.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


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


def fit_and_score(
    X_train, y_train, X_val, y_val, X_test, y_test,
    *,
    c_grid=(0.01, 0.1, 1.0, 10.0),
    seed: int = 0,
    max_iter: int = 1000,
) -> dict:
    """Fit one probe, choose C on val by macro-F1 (ties → smaller C), score on test.

    Returns {"C", "val_macro_f1", "test_macro_f1", "test_micro_f1", "n_train", "n_val",
    "n_test", "n_classes"}; ``n_classes`` counts the classes in train.
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

    test_macro, test_micro = f1_scores(
        y_test, best_model.predict(X_test), _union_labels(y_train, y_test)
    )
    return {
        "C": float(best_C),
        "val_macro_f1": float(best_f1),
        "test_macro_f1": test_macro,
        "test_micro_f1": test_micro,
        "n_train": int(len(y_train)),
        "n_val": int(len(y_val)),
        "n_test": int(len(y_test)),
        "n_classes": len(classes),
    }
