"""Pair verification: ROC AUC of similarity scores for matching (1) vs non-matching (0) pairs."""

from __future__ import annotations

import numpy as np


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (the probability that a random positive outranks a random
    negative; ties count one half). ``scores [N]`` float, ``labels [N]`` in {0, 1}."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError("labels must be 0 or 1")
    positives, negatives = int(labels.sum()), int((1 - labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("roc_auc needs at least one positive and one negative pair")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(scores.size, np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))
