"""Per-attribute presence thresholds, calibrated on training or validation data only.

``Thresholds.fit(scores, labels, split=...)`` refuses ``split="test"``: the reference code
calibrated on test labels. Each attribute's threshold maximises its F1 on the calibration split
(attributes with no positive there get +inf: never predicted present). ``save`` / ``load`` keep
them beside a predictor's checkpoint as JSON (``{"split", "values"}``, +inf written as the
string ``"inf"``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Optional

import numpy as np

from simexplain_jax.io import write_json_atomic

CALIBRATION_SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class Thresholds:
    values: np.ndarray  # [A]
    split: str

    @classmethod
    def fit(cls, scores, labels, *, split: str) -> "Thresholds":
        if split not in CALIBRATION_SPLITS:
            raise ValueError(f"thresholds are calibrated on {CALIBRATION_SPLITS} data only, not {split!r}")
        scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
        values = np.full(scores.shape[1], np.inf)
        for a in range(scores.shape[1]):
            if not labels[:, a].any():
                continue
            order = np.argsort(-scores[:, a], kind="stable")
            s, y = scores[order, a], labels[order, a]
            tp = np.cumsum(y)
            predicted = np.arange(1, len(y) + 1)
            f1 = 2 * tp / (predicted + y.sum())
            last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
            best = last_of_tie[np.argmax(f1[last_of_tie])]
            values[a] = s[best]
        return cls(values, split)

    def present(self, scores) -> np.ndarray:
        """``scores [..., A] -> bool [..., A]``: score >= threshold."""
        return np.asarray(scores) >= self.values

    def save(self, path: str | os.PathLike) -> None:
        """Writes ``{"split", "values"}`` to ``path`` atomically."""
        values = [float(v) if math.isfinite(v) else str(float(v)) for v in np.asarray(self.values, np.float64)]
        write_json_atomic(path, {"split": self.split, "values": values})

    @classmethod
    def load(cls, path: str | os.PathLike, num_attributes: Optional[int] = None) -> "Thresholds":
        """Reads what ``save`` wrote; raises ``FileNotFoundError`` or ``ValueError`` naming ``path``
        when it is missing or malformed, or holds other than ``num_attributes`` values."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"thresholds file {path} not found")
        try:
            with open(path) as f:
                data = json.load(f)
            split = data["split"]
            values = np.asarray([float(v) for v in data["values"]], np.float64)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ValueError(f"thresholds file {path} is not a thresholds JSON ({{\"split\", \"values\"}}): "
                             f"{type(err).__name__}: {err}") from None
        if split not in CALIBRATION_SPLITS:
            raise ValueError(f"thresholds file {path}: split must be one of {CALIBRATION_SPLITS}, got {split!r}")
        if values.ndim != 1 or np.isnan(values).any():
            raise ValueError(f"thresholds file {path}: values must be a list of numbers")
        if num_attributes is not None and len(values) != num_attributes:
            raise ValueError(f"thresholds file {path} holds {len(values)} values, expected {num_attributes} "
                             "(one per attribute of the predictor)")
        return cls(values, split)
