"""Localisation against ground truth (the shapes benchmark's key object)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


BASELINES = ("median", "zero")


class Pointing(NamedTuple):
    hit: bool  # the map's maximum lies on the key object
    mass_on_key: float  # fraction of the positive saliency mass on the key object


def pointing(saliency, key_mask, baseline: str = "median") -> Pointing:
    """Pointing-game hit and positive mass on ``key_mask [H, W]`` (bool) of ``saliency [H, W]``.

    With ties at the maximum (a superpixel method's best superpixel), it is a hit when most of the
    maximal pixels lie on the key object; a flat map does not point (unless the key object covers
    most of the image). ``mass_on_key`` is the fraction of ``max(S - b, 0)`` on the key object,
    with ``b`` the map's median (``baseline="median"``, the default) or 0 (``"zero"``). Methods
    differ by arbitrary offsets (a RISE map is about N times the mean similarity everywhere), so
    mass above the typical pixel is what compares across methods. No positive mass gives 0.
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    s = np.asarray(saliency, np.float64)
    mask = np.asarray(key_mask, bool)
    if s.shape != mask.shape or s.ndim != 2:
        raise ValueError(f"saliency {s.shape} and key_mask {mask.shape} must be the same [H, W]")
    if not np.all(np.isfinite(s)):
        raise ValueError("saliency contains NaN or infinite values")
    if not mask.any():
        raise ValueError("key_mask is empty")
    top = s == s.max()
    positive = np.maximum(s - (np.median(s) if baseline == "median" else 0.0), 0.0)
    total = positive.sum()
    return Pointing(bool(mask[top].mean() > 0.5), float(positive[mask].sum() / total) if total > 0 else 0.0)
