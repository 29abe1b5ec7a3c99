"""Patch kinds (docs/method.md §9): what replaces h_t at a patched position. The single place to add one.

Each kind maps (h_t, ĥ_t, r_t of the partner window, train mean [d]), every argument a float32 tensor
[..., d], to the new h_t, with tensor methods only: this module imports no torch, so Snakemake can read the
kinds' names (resource requests count one LM run per kind) without importing it. :mod:`pndecomp.patching`
applies them.
"""
from __future__ import annotations

from collections.abc import Callable

FLOAT32_TINY = 2.0**-126  # torch.finfo(torch.float32).tiny: the smallest normal float32


def _norm_matched(h, hhat, _r_other, _mean):
    scale = h.norm(dim=-1, keepdim=True) / hhat.norm(dim=-1, keepdim=True).clamp_min(FLOAT32_TINY)
    return hhat * scale


PATCHES: dict[str, Callable] = {
    "identity": lambda h, hhat, r_other, mean: h,
    "hhat": lambda h, hhat, r_other, mean: hhat,
    "hhat_plus_shuffled_r": lambda h, hhat, r_other, mean: hhat + r_other,
    "mean": lambda h, hhat, r_other, mean: mean.expand_as(h),
    "zero_r_norm_matched": _norm_matched,
}


def patch_function(kind: str) -> Callable:
    if kind not in PATCHES:
        raise ValueError(f"unknown patch {kind!r}; known patches: {', '.join(PATCHES)}")
    return PATCHES[kind]
