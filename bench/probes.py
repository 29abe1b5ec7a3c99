"""Probe-stage cost at the paper's sizes: scikit-learn probe fits timed on synthetic data of the paper's
shapes, and the paper config's whole probe stage multiplied out for a 16-core machine.

    .venv/bin/python bench/probes.py            # ~3 min on an idle 2-core machine (12 min at load 7-11)
    .venv/bin/python bench/probes.py --quick    # smoke run, well under a minute (rows / 10)

One probe fit is what ``pndecomp.probes.fit_and_score`` does per C of the grid: ``make_probe(C)``
(StandardScaler, then lbfgs multinomial logistic regression with balanced class weights) fit on the
train rows, then the val rows scored. Its cost is a fixed part (scaling, set-up, val prediction) plus
lbfgs iterations. Both are measured at the paper's size, 40,000 train rows (the issue's figure; the
next_token_type_8 cap), for every (features, classes) shape of the paper config:

* features: ``h``, ``h_mean``, ``hhat`` and ``r`` have Pythia-410m's d_model = 1,024; ``hhat_r`` = [ĥ, r]
  has 2,048 (widths from ``pndecomp.representations`` itself);
* classes: 22 for domain (The Pile's subsets), 8 for next_token_type_8 (``tokentypes.TOKEN_TYPES``);
  a control task has its base task's classes and windows.

Seconds per iteration = the slope between two fits capped at 2 and 12 iterations (fixed part = the
intercept), median over --rounds, for every shape. Iterations actually used, per C, come from uncapped
fits (``max_iter`` of the config, 1,000) on --iter-rows rows (default 10,000) of 1,024 features, with
the task's labels and with the labels shuffled (a control task: no signal, the same class balance);
the 2,048-wide [ĥ, r] is assumed to take as many. lbfgs time is about linear in rows x features x
classes x iterations, so a fit at R rows costs (fixed + iterations x s/iter) x R / 40,000.

Synthetic data: a 256-dimensional latent with a power-law spectrum (variance 1/j), class means in it,
mapped to the feature width by a random matrix, plus isotropic noise: correlated, ill-conditioned
features like an LM's hidden states; --separation sets how well the classes separate (0.15: val
accuracy 0.5-0.7). Real features differ, so iterations are the uncertain factor: the SUMMARY also
gives the bound with every fit at max_iter.

The stage: the paper config's tasks x layers x representations x C values (``configs/paper.yaml``,
C grid and max_iter from the schema's defaults), in one ``fit_probe`` job per (task, layer) that
fits its representations and C values one after another on one core (the rule's ``threads: 1``).
On 16 cores the jobs run 16 at a time: the stage takes the makespan of the jobs, longest first, on
16 cores (at least total core-seconds / 16). Rows: 40,000 for every task (the issue's assumption),
and at the caps (domain: 4,000 per class x 22 = 88,000, an upper bound: the Pile's small subsets
have fewer windows). Target: <= 1 h; above it, a GPU solver would pay off.
"""
from __future__ import annotations

import argparse
import heapq
import time
import warnings

import _common as C  # noqa: I001
import numpy as np
import yaml
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from pndecomp import tasks, tokentypes
from pndecomp.overrides import load_schema
from pndecomp.probes import make_probe
from pndecomp.representations import REPRESENTATIONS

PAPER_CONFIG = C.REPO / "configs" / "paper.yaml"
SCHEMA = C.REPO / "workflow" / "schemas" / "config.schema.yaml"
PILE_SUBSETS = 22  # The Pile's pile_set_name values: the domain task's classes at paper scale
CLASSES = {"domain": PILE_SUBSETS, "next_token_type_8": len(tokentypes.TOKEN_TYPES)}
D_MODEL = C.PYTHIA_410M_DIMS["hidden_size"]
ROWS = 40_000  # train rows of a timed fit
VAL_ROWS = 5_000
LATENT = 256
CAPS = (2, 12)  # lbfgs iterations of the two capped fits whose difference gives seconds per iteration
TARGET_SECONDS = 3600
CORES = 16


def paper_probes() -> tuple[dict, list[int]]:
    """The paper config's probes section with the schema's defaults filled in, and its layers."""
    paper = yaml.safe_load(PAPER_CONFIG.read_text())
    schema = load_schema(SCHEMA)["properties"]["probes"]["properties"]
    defaults = {key: spec["default"] for key, spec in schema.items() if "default" in spec}
    return {**defaults, **paper["probes"]}, paper["layers"]


def feature_widths() -> dict[str, int]:
    """Features of every representation at Pythia-410m's d_model, from the representations' own code."""
    one_row = {name: np.zeros((1, D_MODEL), dtype=np.float32) for name in ("h", "h_mean", "hhat", "r")}
    return {name: rep.build(one_row).shape[1] for name, rep in REPRESENTATIONS.items()}


def task_shape(name: str, probes: dict) -> tuple[int, int]:
    """(classes, train rows at the caps) of a configured task; a control task probes its base's windows."""
    task = tasks.get(name)
    base = tasks.get(task.control.base) if task.control is not None else task
    if base.name not in CLASSES:
        raise SystemExit(f"probes.tasks has {name!r}: this bench knows the classes of {sorted(CLASSES)} only")
    classes = CLASSES[base.name]
    caps = (probes.get("caps") or {}).get(base.name) or base.default_caps
    rows = caps["probe_train"] * (classes if base.cap_kind == "per_class" else 1)
    return classes, rows


def synthetic(rows: int, features: int, classes: int, separation: float, seed: int):
    """(X float64 [rows, features], y int [rows]): see the module docstring."""
    rng = np.random.default_rng(seed)
    scale = (1.0 / np.sqrt(np.arange(1, LATENT + 1))).astype(np.float32)
    # The same class means and mixing for every seed of a shape: train, val and control rows share them.
    shape_rng = np.random.default_rng([features, classes])
    means = shape_rng.standard_normal((classes, LATENT), dtype=np.float32) * scale * separation
    mixing = shape_rng.standard_normal((LATENT, features), dtype=np.float32) / np.sqrt(LATENT)
    y = rng.integers(0, classes, rows)
    latent = rng.standard_normal((rows, LATENT), dtype=np.float32) * scale + means[y]
    X = latent @ mixing + 0.05 * rng.standard_normal((rows, features), dtype=np.float32)
    return X.astype(np.float64), y  # fit_and_score fits on float64


def fit_once(C_value: float, max_iter: int, X, y, X_val, y_val) -> tuple[float, int, float]:
    """(CPU seconds, lbfgs iterations, val accuracy) of one fit as fit_and_score does it per C.

    CPU seconds (``time.process_time``): with one thread, a fit's wall time on an idle core; unlike wall
    time, they barely move when other processes share the machine."""
    start = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # capped fits stop early on purpose
        model = make_probe(C_value, max_iter=max_iter).fit(X, y)
    accuracy = float(np.mean(model.predict(X_val) == y_val))
    return time.process_time() - start, int(model[-1].n_iter_[0]), accuracy


def seconds_per_iteration(features: int, classes: int, args, log) -> dict:
    """{"s_per_iter", "fixed_s"} of a fit at args.rows rows: the slope and intercept between capped fits."""
    X, y = synthetic(args.rows, features, classes, args.separation, seed=1)
    X_val, y_val = synthetic(VAL_ROWS * args.rows // ROWS, features, classes, args.separation, seed=2)
    slopes, intercepts = [], []
    for _ in range(args.rounds):
        (t_short, n_short, _), (t_long, n_long, _) = (fit_once(1.0, k, X, y, X_val, y_val) for k in CAPS)
        if n_long <= n_short:
            raise SystemExit(f"the {features} x {classes} synthetic problem converged in {n_long} iterations: "
                             "lower --separation")
        slopes.append((t_long - t_short) / (n_long - n_short))
        intercepts.append(t_short - slopes[-1] * n_short)
    s_per_iter, fixed = C.median(slopes), max(0.0, C.median(intercepts))
    log(f"  {features:5d} features x {classes:2d} classes, {args.rows} rows: {s_per_iter:.3f} CPU s/iteration "
        f"({C.spread(slopes)}), fixed {fixed:.2f} s per fit (scaling, set-up, val prediction)")
    return {"s_per_iter": s_per_iter, "fixed_s": fixed}


def iterations_used(classes: int, args, c_grid, max_iter: int, log) -> dict:
    """{"task"|"control": {C: lbfgs iterations}} of uncapped fits on args.iter_rows rows of D_MODEL features,
    with the synthetic labels and with the same labels shuffled (a control task)."""
    X, y = synthetic(args.iter_rows, D_MODEL, classes, args.separation, seed=1)
    X_val, y_val = synthetic(VAL_ROWS * args.iter_rows // ROWS, D_MODEL, classes, args.separation, seed=2)
    iterations = {}
    for kind, y_fit in (("task", y), ("control", np.random.default_rng(3).permutation(y))):
        iterations[kind], parts = {}, []
        for c_value in c_grid:
            seconds, n_iter, accuracy = fit_once(c_value, max_iter, X, y_fit, X_val, y_val)
            iterations[kind][c_value] = n_iter
            parts.append(f"C={c_value:g} {n_iter} it ({seconds:.1f} CPU s, val acc {accuracy:.2f})")
        log(f"  iterations, {classes:2d} classes, {kind} labels ({args.iter_rows} rows x {D_MODEL}): "
            + ", ".join(parts))
    return iterations


def makespan(job_seconds: list[float], cores: int) -> float:
    """Longest job first onto the least loaded core (what a scheduler of equal-priority jobs does at best)."""
    loads = [0.0] * cores
    for seconds in sorted(job_seconds, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + seconds)
    return max(loads)


def stage(probes: dict, layers: list[int], widths: dict[str, int], shapes: dict, iterations: dict, rows_of,
          at_max_iter: bool):
    """(makespan on CORES cores, core-seconds, fits, longest job's seconds) of the paper's probe stage."""
    jobs, fits = [], 0
    for name in probes["tasks"]:
        classes, cap_rows = task_shape(name, probes)
        kind = "control" if tasks.get(name).control is not None else "task"
        rows = rows_of(cap_rows)
        job = 0.0
        for width in widths.values():
            shape = shapes[width, classes]
            for c_value in probes["c_grid"]:
                n_iter = probes["max_iter"] if at_max_iter else iterations[classes][kind][c_value]
                job += (shape["fixed_s"] + n_iter * shape["s_per_iter"]) * rows / ROWS
                fits += 1
        jobs += [job] * len(layers)
    fits *= len(layers)
    return makespan(jobs, CORES), sum(jobs), fits, max(jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help=f"train rows of the timed fits (default {ROWS})")
    parser.add_argument("--iter-rows", type=int, default=None,
                        help="rows of the uncapped fits that count iterations (default 10,000)")
    parser.add_argument("--separation", type=float, default=0.15,
                        help="class-mean scale of the synthetic data (0.15: val accuracy 0.5-0.7, like real probes)")
    parser.add_argument("--rounds", type=int, default=3, help="capped-fit pairs per shape (median)")
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads per fit (default 1: the fit_probe rule's threads, one core per job)")
    parser.add_argument("--quick", action="store_true", help="rows / 10, one round")
    args = parser.parse_args()
    args.rows = args.rows or (ROWS // 10 if args.quick else ROWS)
    args.iter_rows = min(args.rows, args.iter_rows or (1_000 if args.quick else 10_000))
    args.rounds = 1 if args.quick else args.rounds
    probes, layers = paper_probes()
    widths = feature_widths()
    c_grid = sorted(probes["c_grid"])
    classes = sorted({task_shape(name, probes)[0] for name in probes["tasks"]}, reverse=True)
    C.say(f"machine: {C.machine()}")
    C.say(f"threads per fit: {args.threads} (threadpoolctl); {len(c_grid)} C values {c_grid}, max_iter "
          f"{probes['max_iter']}; representations {widths}; classes {classes}")
    start, start_cpu = time.perf_counter(), time.process_time()
    with threadpool_limits(args.threads):
        shapes = {(width, n_classes): seconds_per_iteration(width, n_classes, args, C.say)
                  for width in sorted(set(widths.values()), reverse=True) for n_classes in classes}
        iterations = {n_classes: iterations_used(n_classes, args, c_grid, probes["max_iter"], C.say)
                      for n_classes in classes}
    # Measured at args.rows; a fit at R rows costs R / args.rows times as much.
    for shape in shapes.values():
        shape["fixed_s"] *= ROWS / args.rows
        shape["s_per_iter"] *= ROWS / args.rows
    results = {}
    for label, rows_of in (("40,000 rows", lambda cap: ROWS), ("caps", lambda cap: cap)):
        for bound in (False, True):
            results[label, bound] = stage(probes, layers, widths, shapes, iterations, rows_of, bound)
            span, core_s, fits, longest = results[label, bound]
            C.say(f"  stage at {label}{', every fit at max_iter' if bound else ''}: {fits} fits, "
                  f"{core_s / 3600:.2f} core-hours, {span / 60:.1f} min on {CORES} cores (one per job; "
                  f">= {core_s / CORES / 60:.1f} min; longest job {longest / 60:.1f} min)")
    C.say(f"  measured in {time.perf_counter() - start:.0f} s wall, {time.process_time() - start_cpu:.0f} CPU s")
    estimate, bound = results["40,000 rows", False][0], results["40,000 rows", True][0]
    at_caps, caps_bound = results["caps", False][0], results["caps", True][0]
    verdict = "met: scikit-learn is enough" if max(estimate, at_caps) <= TARGET_SECONDS else \
        "MISSED: a GPU solver would pay off"
    C.say(f"SUMMARY probes paper stage ({results['caps', False][2]} fits) on {CORES} cores, one per job: "
          f"{estimate / 60:.1f} min at 40,000 rows, {at_caps / 60:.1f} min at the caps [<=60 min] -> {verdict}; "
          f"every fit at max_iter {probes['max_iter']}: {bound / 60:.0f} / {caps_bound / 60:.0f} min"
          + (" (quick)" if args.quick else ""))


if __name__ == "__main__":
    main()
