"""The configured predictor entries: their names, and the config each one's jobs see.

A study compares entries side by side (``predictors:``): each is trained, decomposed, scored and probed on its
own paths, with its own overrides of the predictor and train sections.
"""
from __future__ import annotations

from collections.abc import Mapping

from .config_schema import ConfigError


def predictor_names(config: Mapping) -> list[str]:
    """The configured predictors' names in config order (``predictors``; null: just ``predictor.kind``)."""
    predictors = config.get("predictors")
    if not predictors:
        return [config["predictor"]["kind"]]
    names = list(predictors)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"predictors: {duplicates} listed more than once; each name must be unique")
    return names


def with_predictor(config: Mapping, name: str) -> dict:
    """The config as one predictor's jobs see it: ``predictor`` is that predictor's section (the shared
    section, its kind defaulting to the name, then the name's own overrides)."""
    predictors = config.get("predictors")
    if not predictors:
        if name != config["predictor"]["kind"]:
            raise ConfigError(f"predictor {name!r} is not configured; configured is {config['predictor']['kind']!r}")
        return dict(config)
    if name not in predictors:
        raise ConfigError(f"predictor {name!r} is not in predictors {list(predictors)}")
    overrides = dict((predictors.get(name) if isinstance(predictors, Mapping) else None) or {})
    # A `train:` entry overrides the train section for this predictor alone (a budget study's steps).
    train = overrides.pop("train", None) or {}
    unknown = sorted(set(overrides) - set(config["predictor"]))
    if unknown:
        raise ConfigError(f"predictors.{name}: unknown setting(s) {unknown}; valid are the predictor section's keys "
                          f"{sorted(config['predictor'])} and train")
    own = {**config, "predictor": {**config["predictor"], "kind": name, **overrides}}
    if train:
        unknown = sorted(set(train) - set(config["train"]))
        if unknown:
            raise ConfigError(f"predictors.{name}.train: unknown setting(s) {unknown}; valid are the train "
                              f"section's keys {sorted(config['train'])}")
        own["train"] = {**config["train"], **train}
    return own


def training_budgets(config: Mapping) -> dict[str, int]:
    """{predictor: its train.steps} of the entries with a ``train:`` override when there are at least two (a
    budget study), else {}. Other entries (a closed-form reference such as ridge_ar4) are no budget."""
    predictors = config.get("predictors")
    if not isinstance(predictors, Mapping):
        return {}
    budgets = {name: with_predictor(config, name)["train"]["steps"] for name, entry in predictors.items()
               if isinstance(entry, Mapping) and entry.get("train")}
    return budgets if len(budgets) > 1 else {}
