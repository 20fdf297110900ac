"""Attribute recognition: mean average precision (scikit-learn's average precision), x 1."""

from __future__ import annotations

import numpy as np


def average_precision(scores, labels) -> float:
    """AP of one attribute: mean over positives of the precision at their rank (ties: a tied group
    is ranked as a whole, as scikit-learn's step-wise precision/recall curve)."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each tied group
    tp = np.cumsum(y)[distinct]
    fp = (distinct + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores, labels) -> float:
    """Mean AP over the attributes with at least one positive: ``scores, labels [N, A]``."""
    scores, labels = np.asarray(scores), np.asarray(labels).astype(bool)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be [N, A]")
    columns = [a for a in range(labels.shape[1]) if labels[:, a].any()]
    if not columns:
        raise ValueError("no attribute has a positive example")
    return float(np.mean([average_precision(scores[:, a], labels[:, a]) for a in columns]))


def regret_ratios(selected_drops, best_drops) -> np.ndarray:
    """How close each pair's selected attribute comes to the one the model relies on most.

    For each pair, the oracle's similarity drop when the selected attribute is removed, divided by
    the largest drop over the candidates (the key object's attributes): 1 for the oracle's own
    choice, near 1 for a near-tie that exact agreement would count as a miss. Where no candidate's
    removal lowers the similarity (``best <= 0``), the ratio is 1 if the selection drops as much as
    the best, else 0.

    Args:
      selected_drops: ``[P]`` drops of the selected attributes.
      best_drops: ``[P]`` the largest drop among each pair's candidates.

    Returns:
      ``[P]`` float64 ratios.
    """
    selected, best = np.asarray(selected_drops, np.float64), np.asarray(best_drops, np.float64)
    if selected.shape != best.shape or selected.ndim != 1:
        raise ValueError(f"selected_drops {selected.shape} and best_drops {best.shape} must both be [P]")
    if not (np.all(np.isfinite(selected)) and np.all(np.isfinite(best))):
        raise ValueError("drops must be finite")
    positive = best > 0
    return np.where(positive, selected / np.where(positive, best, 1.0), (selected >= best).astype(np.float64))
