"""What a probe reads (docs/method.md §6): the single place to add a representation.

Each representation is built from one layer's probe-features file (``h``, ``hhat`` and ``r`` at the
last window position T, and ``h_mean``, the mean of h_1..h_{T-1}; each [windows, d_model] float32).
Tables and heatmaps list them in this order.

``h_mean`` is the fair comparator of ĥ_T: ĥ_T is an attention-weighted summary of the same
h_1..h_{T-1}, so what ĥ carries beyond h_mean is what the predictor's weighting adds.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Representation:
    name: str  # in tables and file columns
    label: str  # in figures
    build: Callable[[Mapping[str, np.ndarray]], np.ndarray]  # probe features -> [windows, features]


REPRESENTATIONS: dict[str, Representation] = {rep.name: rep for rep in (
    Representation("h", "h", lambda features: features["h"]),
    Representation("h_mean", "mean h<T", lambda features: features["h_mean"]),
    Representation("hhat", "ĥ", lambda features: features["hhat"]),
    Representation("r", "r", lambda features: features["r"]),
    Representation("hhat_r", "[ĥ, r]", lambda features: np.concatenate([features["hhat"], features["r"]], axis=1)),
)}
