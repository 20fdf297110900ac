"""Per-attribute presence thresholds, calibrated on training or validation data only.

``Thresholds.fit(scores, labels, split=...)`` refuses ``split="test"``: the reference code
calibrated on test labels. Each attribute's threshold maximises its F1 on the calibration split
(attributes with no positive there get +inf: never predicted present).
"""

from __future__ import annotations

import dataclasses

import numpy as np

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
