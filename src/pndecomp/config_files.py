"""Which files make the config, and the record of it that a run leaves in results/<experiment>/config.yaml.

* **Composition** (:func:`compose`). Without ``--configfile``, the config is the working directory's
  ``config.yaml``, the embedded default. With ``--configfile FILE ...``, it is those files alone, merged
  in order, and every key they do not set takes the schema's default: the embedded default's CPU sizing
  does not leak into them. A file that builds on another says so with ``extends: PATH`` (relative to the
  file; recursively), which merges that file underneath it. ``--config KEY=VALUE`` goes on top either way.
  Merging is Snakemake's: nested mappings merge key by key, any other value replaces.
* **The experiment's record** (:func:`check_experiment`, :func:`write_resolved`). A run writes its
  resolved config (every key, defaults filled, layers as block indices) to
  ``results/<experiment>/config.yaml``. The next run under the same ``experiment`` name stops before any
  work if its model, corpus or layers differ from that record, since its results would overwrite or mix
  with the recorded run's; any other key may change (the rules that read it rerun).

Standard library and PyYAML only (no torch): Snakemake runs it while it builds the DAG.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from .config_schema import ConfigError

#: The embedded default, in the working directory: the config when no --configfile is given.
DEFAULT_CONFIG = "config.yaml"
EXTENDS = "extends"


def merge(base: Mapping, update: Mapping) -> dict:
    """A copy of ``base`` with ``update`` merged in, as Snakemake merges config files: a mapping merges
    into a mapping key by key; any other value (a list, a scalar, null) replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping):
            merged[key] = merge(merged[key] if isinstance(merged.get(key), Mapping) else {}, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load(path: str | os.PathLike, _extended_by: tuple[Path, ...] = ()) -> tuple[dict, list[Path]]:
    """The config file at ``path`` with what it ``extends`` merged underneath, and every file read
    (the extended ones first)."""
    path = Path(os.path.abspath(path))  # normalised (configs/../config.yaml is config.yaml), links kept
    chain = " <- ".join(str(p) for p in (path, *_extended_by))
    if path in _extended_by:
        raise ConfigError(f"config files extend each other in a cycle: {chain}")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist" + (f" ({chain})" if _extended_by else ""))
    with open(path, encoding="utf-8") as handle:
        try:
            config = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path} holds a {type(config).__name__}, not a mapping of keys")
    base = config.pop(EXTENDS, None)
    if base is None:
        return config, [path]
    if not isinstance(base, str):
        raise ConfigError(f"{EXTENDS}: in {path} is {base!r}; give the path of one config file, relative to this one")
    base_config, files = load(path.parent / base, (path, *_extended_by))
    return merge(base_config, config), [*files, path]


def compose(configfiles: Sequence[str | os.PathLike], overrides: Mapping | None = None) -> tuple[dict, list[Path]]:
    """The config of a run and the files it was read from: the ``--configfile`` files (each with what it
    extends), or without any the working directory's config.yaml; then ``overrides`` (``--config``)."""
    config: dict = {}
    read: list[Path] = []
    if not configfiles and not Path(DEFAULT_CONFIG).is_file():
        raise ConfigError(f"no config: neither --configfile nor {DEFAULT_CONFIG} in {Path.cwd()}; give a config "
                          f"file with --configfile (keys: docs/config.md), or run in the repository, whose "
                          f"{DEFAULT_CONFIG} is the embedded default")
    for path in configfiles or [DEFAULT_CONFIG]:
        loaded, files = load(path)
        config = merge(config, loaded)
        read += files
    overrides = dict(overrides or {})
    if EXTENDS in overrides:
        raise ConfigError(f"--config {EXTENDS}=...: only a config file can extend another; write `{EXTENDS}:` in "
                          "the file given with --configfile")
    return merge(config, overrides), read


def resolved_path(experiment: str) -> Path:
    """Where a run records its resolved config."""
    return Path("results") / experiment / "config.yaml"


def identity(config: Mapping) -> dict[str, object]:
    """What makes results of one experiment comparable: the corpus, and the model and layers (a model
    study's models keep theirs in results/<experiment>/<name>/config.yaml, so that adding a model to a
    study is no change here)."""
    corpus = config["corpus"]
    found: dict[str, object] = {
        "models": "a model study" if config.get("models") else None,
        "corpus": {"source": corpus["source"], corpus["source"]: corpus.get(corpus["source"])},
    }
    if not config.get("models"):
        model = config["model"]
        found.update({"model.id": model["id"], "model.revision": model.get("revision"),
                      "model.random_init": model.get("random_init", False), "layers": list(config["layers"])})
    return found


def check_experiment(config: Mapping) -> None:
    """Stop, naming what differs, when results/<experiment>/config.yaml records another model, corpus
    or layer set than ``config``'s (a validated config, layers resolved)."""
    recorded_path = resolved_path(config["experiment"])
    if not recorded_path.is_file():
        return
    recorded = yaml.safe_load(recorded_path.read_text(encoding="utf-8"))
    old, new = identity(recorded), identity(config)
    changes = [f"{key}: {old.get(key)!r} → {new.get(key)!r}" for key in {**old, **new} if old.get(key) != new.get(key)]
    if changes:
        raise ConfigError(
            f"experiment {config['experiment']!r} already holds results of another run ({recorded_path}):\n"
            + "".join(f"  {change}\n" for change in changes)
            + f"Results of different models, corpora or layer sets must not overwrite each other: set another "
            f"`experiment:` name, or delete results/{config['experiment']}/ to start it over.")


def write_resolved(config: Mapping, path: str | os.PathLike) -> None:
    """``config`` as YAML at ``path``, written under a temporary name and renamed into place."""
    from .storage import atomic_path  # numpy and pandas: imported by the job that writes, not at DAG time

    with atomic_path(path) as temporary:
        temporary.write_text("# The resolved config of this run: every key, the schema's defaults filled in, layers "
                             "as block indices.\n" + yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
