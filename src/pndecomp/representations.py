"""What a probe reads (SPEC §6): the single place to add a representation.

Each representation is built from one layer's probe-features file (``h``, ``hhat`` and ``r`` at the
last window position, [windows, d_model] float32). Tables and heatmaps list them in this order.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Representation:
    name: str  # in tables and file columns
    label: str  # in figures
    build: Callable[[Mapping[str, torch.Tensor]], torch.Tensor]  # probe features -> [windows, features]


REPRESENTATIONS: dict[str, Representation] = {rep.name: rep for rep in (
    Representation("h", "h", lambda features: features["h"]),
    Representation("hhat", "ĥ", lambda features: features["hhat"]),
    Representation("r", "r", lambda features: features["r"]),
    Representation("hhat_r", "[ĥ, r]", lambda features: torch.cat([features["hhat"], features["r"]], dim=1)),
)}
