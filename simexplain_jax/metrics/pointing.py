"""Localisation against ground truth (the shapes benchmark's key object)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Pointing(NamedTuple):
    hit: bool  # the map's maximum lies on the key object
    mass_on_key: float  # fraction of the positive saliency mass on the key object


def pointing(saliency, key_mask) -> Pointing:
    """Pointing-game hit and positive mass on ``key_mask [H, W]`` (bool) of ``saliency [H, W]``.

    Ties at the maximum count as a hit only if every maximal pixel is on the key object (a flat
    map does not point). A map with no positive mass has ``mass_on_key`` 0.
    """
    s = np.asarray(saliency, np.float64)
    mask = np.asarray(key_mask, bool)
    if s.shape != mask.shape or s.ndim != 2:
        raise ValueError(f"saliency {s.shape} and key_mask {mask.shape} must be the same [H, W]")
    if not np.all(np.isfinite(s)):
        raise ValueError("saliency contains NaN or infinite values")
    if not mask.any():
        raise ValueError("key_mask is empty")
    top = s == s.max()
    positive = np.maximum(s, 0.0)
    total = positive.sum()
    return Pointing(bool(np.all(mask[top])), float(positive[mask].sum() / total) if total > 0 else 0.0)
