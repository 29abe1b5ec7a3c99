"""The configured predictor entries: their names, and the config each one's jobs see.

A study compares entries side by side (``predictors:``): each is trained, decomposed, scored and probed on its
own paths, with its own overrides of the predictor and train sections.
"""
from __future__ import annotations

from collections.abc import Mapping

from .config_schema import ConfigError
from .predictor_kinds import predictor_kind


def _listed(config: Mapping) -> dict[str, dict]:
    """The entries as configured: name -> overrides (``predictors``; null: one entry, ``predictor.kind``)."""
    predictors = config.get("predictors")
    if not predictors:
        return {config["predictor"]["kind"]: {}}
    if isinstance(predictors, Mapping):
        return {name: dict(overrides or {}) for name, overrides in predictors.items()}
    duplicates = sorted({name for name in predictors if predictors.count(name) > 1})
    if duplicates:
        raise ConfigError(f"predictors: {duplicates} listed more than once; each name must be unique")
    return {name: {} for name in predictors}


def _closed_form(entry: str, kind: str) -> bool:
    try:
        return predictor_kind(kind).closed_form
    except ValueError as error:
        raise ConfigError(f"predictors.{entry}: {error}") from error


def _expanded(config: Mapping) -> dict[str, tuple[str, dict]]:
    """name -> (the configured entry it comes from, its overrides): see :func:`entries`."""
    listed = _listed(config)
    seeds = (config.get("train") or {}).get("seeds")
    expanded: dict[str, tuple[str, dict]] = {}
    for entry, overrides in listed.items():
        kind = overrides.get("kind", entry)
        if not seeds or "seed" in overrides or _closed_form(entry, kind):
            expanded[entry] = (entry, overrides)
            continue
        for seed in seeds:
            name = f"{entry}_s{seed}"
            if name in listed or name in expanded:
                raise ConfigError(f"predictors: {entry!r} with train.seeds makes {name!r}, which is also configured; "
                                  f"rename one of them")
            expanded[name] = (entry, {**overrides, "kind": kind, "seed": seed})
    return expanded


def entries(config: Mapping) -> dict[str, dict]:
    """Every predictor the run trains: name -> its overrides, in config order. With ``train.seeds``, an entry
    trained by SGD that names no seed becomes one entry per seed, ``<entry>_s<seed>``, whose ``seed`` is set
    (its kind stays the entry's); a closed-form entry is fitted once, as it has no randomness to vary."""
    return {name: overrides for name, (_, overrides) in _expanded(config).items()}


def predictor_names(config: Mapping) -> list[str]:
    """The configured predictors' names in config order, seeds expanded (:func:`entries`)."""
    return list(_expanded(config))


def entry_seeds(config: Mapping) -> dict[str, tuple[str, int | None]]:
    """Each predictor's (configured entry, training seed): the seed it names or was expanded with, else
    ``train.seed`` (None there: the run's ``seed``); None for a closed-form entry, which has no seed."""
    found = {}
    for name, (entry, overrides) in _expanded(config).items():
        closed_form = _closed_form(entry, overrides.get("kind", entry))
        seed = overrides.get("seed", (config.get("train") or {}).get("seed"))
        found[name] = (entry, None if closed_form else config["seed"] if seed is None else seed)
    return found


def with_predictor(config: Mapping, name: str) -> dict:
    """The config as one predictor's jobs see it: ``predictor`` is that predictor's section (the shared
    section, its kind defaulting to the name, then the name's own overrides), ``train`` the train section
    with the entry's ``train:`` overrides and its ``seed`` as ``train.seed``, without ``train.seeds`` (the
    other seeds are not this predictor's business: adding one must not rerun it)."""
    expanded = entries(config)
    if name not in expanded:
        raise ConfigError(f"predictor {name!r} is not configured; configured are {list(expanded)}")
    overrides = dict(expanded[name])
    # A `train:` entry overrides the train section for this predictor alone (a budget study's steps).
    train = dict(overrides.pop("train", None) or {})
    if "seed" in overrides:
        train["seed"] = overrides.pop("seed")
    unknown = sorted(set(overrides) - set(config["predictor"]))
    if unknown:
        raise ConfigError(f"predictors.{name}: unknown setting(s) {unknown}; valid are the predictor section's keys "
                          f"{sorted(config['predictor'])}, train and seed")
    own = {**config, "predictor": {**config["predictor"], "kind": name, **overrides}}
    if "train" not in config:  # a partial config (a study's view) with no train section to override
        return own
    unknown = sorted(set(train) - set(config["train"]))
    if unknown:
        raise ConfigError(f"predictors.{name}.train: unknown setting(s) {unknown}; valid are the train "
                          f"section's keys {sorted(config['train'])}")
    own["train"] = {key: value for key, value in {**config["train"], **train}.items() if key != "seeds"}
    return own


def training_budgets(config: Mapping) -> dict[str, int]:
    """{predictor: its train.steps} of the entries with a ``train:`` override when they have at least two step
    counts (a budget study), else {}. Other entries (a closed-form reference such as ridge_ar4) are no budget."""
    budgets = {name: with_predictor(config, name)["train"]["steps"] for name, overrides in entries(config).items()
               if overrides.get("train")}
    return budgets if len(set(budgets.values())) > 1 else {}


def dimensions(config: Mapping) -> dict[str, dict]:
    """What varies between the predictors, for a robustness grid: predictor -> its configured ``entry``, its
    ``architecture`` (its predictor section, as a string: entries that differ only in budget or seed share
    it), its ``budget`` ("closed form", "plateau": trained to its validation plateau, else "<steps> steps")
    and its training ``seed`` (None for a closed-form kind)."""
    found = {}
    for name, (entry, seed) in entry_seeds(config).items():
        own = with_predictor(config, name)
        train = own["train"]
        budget = ("closed form" if seed is None else
                  "plateau" if train["schedule"] == "plateau" and train["stop_patience"] else f"{train['steps']} steps")
        architecture = ", ".join(f"{key}={value}" for key, value in sorted(own["predictor"].items()))
        found[name] = {"entry": entry, "architecture": architecture, "budget": budget, "seed": seed}
    return found
