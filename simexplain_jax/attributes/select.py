"""Choosing the attribute that explains a match (docs/method.md, "Selecting the explanation attribute").

Candidates are the attributes the predictor believes present in the query (calibrated
thresholds). ``paper``: rank by ``w * confidence(a | q) + (1 - w) * match(S(q, r), AAM_a(q))``.
``pair_aware`` (ours): an attribute that explains a match should be shared by both images, so
candidates must be present in the query and in the reference, and the match term averages the
query's agreement (its map of q against r vs. q's activation map) and the reference's (its map of
r against q vs. r's activation map). ``confidence`` is the sigmoid of the score; ``match`` is the
cosine similarity of the saliency map normalised as Eq. 2's target (``losses.saliency_targets``,
the one place that normalisation is written) and the attribute's spatial softmax, both on the
activation-map grid.

``concept`` (ours): attributes are ranked by how much of the similarity the model's embedding
attributes to them (``relevance [A]`` from ``concepts.concept_relevance``), scaled by its largest
magnitude, plus the predictor's belief that the attribute is in both images:
``relevance / max |relevance| + presence_weight * (log sigmoid(z_q) + log sigmoid(z_r))``
(``presence="soft"``, the default), or restricted to the attributes the calibrated thresholds
call present in both (``presence="both"``). Optionally mixed with the pair-aware map match:
``(1 - w) * rank + w * match``. It follows what the similarity model encodes rather than where an
attribute sits, so it can tell "red" from "square" on one object. Soft presence was chosen by
measurement on validation pairs: the thresholds miss the class attribute in at least one image
of 44% of the 64 px test pairs, which caps the hard restriction (docs/attributes_shapes64.md).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import numpy as np

from simexplain_jax.attributes.losses import saliency_targets
from simexplain_jax.models.attributes import spatial_softmax

SELECTORS = ("paper", "pair_aware", "concept", "random")


class Explanation(NamedTuple):
    attributes: list  # indices, best first
    scores: list  # their ranking scores


@functools.partial(jax.jit, static_argnames="normalize")
def _distributions(saliency, aams, normalize):
    """The saliency map as Eq. 2's target ``[g*g]`` and each attribute's spatial softmax ``[A, g*g]``."""
    return saliency_targets(saliency, normalize), spatial_softmax(aams[None])[0]


def map_match(saliency: np.ndarray, aams: np.ndarray, normalize: str = "zscore") -> np.ndarray:
    """Cosine similarity of the saliency map ``[g, g]``, normalised as the target of Eq. 2
    (``losses.saliency_targets``), with each attribute's spatial softmax (``aams [g, g, A]``) -> ``[A]``."""
    saliency, aams = np.asarray(saliency), np.asarray(aams)
    if saliency.ndim != 2 or aams.ndim != 3 or saliency.shape != aams.shape[:2]:
        raise ValueError(f"saliency must be [g, g] and aams [g, g, A] on the same grid, got {saliency.shape} "
                         f"and {aams.shape}")
    target, attention = (np.asarray(x, np.float64) for x in _distributions(saliency, aams, normalize))
    return attention @ target / (np.linalg.norm(attention, axis=1) * np.linalg.norm(target) + 1e-12)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


PRESENCE = ("soft", "both")


def select(query_scores, query_aams, query_saliency, thresholds, *, w: float = 0.5, selector: str = "paper",
           reference_scores=None, reference_aams=None, reference_saliency=None, relevance=None,
           presence: str = "soft", presence_weight: float = 0.05, top_k: int = 3,
           rng: Optional[np.random.Generator] = None) -> Explanation:
    """The top ``top_k`` attributes explaining a pair, with their scores (see the module docstring).

    ``query_scores [A]``, ``query_aams [g, g, A]``, ``query_saliency [g, g]`` (the query's map
    against the reference, resized to the grid); ``thresholds`` a ``Thresholds``. ``pair_aware``
    needs the reference's three as well; ``concept`` needs the reference's scores and
    ``relevance [A]`` (and the reference's maps when ``w > 0``), with ``presence`` and
    ``presence_weight`` as in the module docstring; ``random`` orders the query's candidates at random.
    """
    if selector not in SELECTORS:
        raise ValueError(f"selector must be one of {SELECTORS}, got {selector!r}")
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"w must be in [0, 1], got {w}")
    present = thresholds.present(query_scores)
    if selector == "random":
        candidates = np.flatnonzero(present)
        order = (rng or np.random.default_rng(0)).permutation(candidates)[:top_k]
        return Explanation(order.tolist(), [float("nan")] * len(order))
    if selector == "concept":
        return _select_by_concept(query_scores, query_aams, query_saliency, thresholds, w, reference_scores,
                                  reference_aams, reference_saliency, relevance, presence, presence_weight, top_k)
    confidence = sigmoid(query_scores)
    match = map_match(query_saliency, query_aams)
    if selector == "pair_aware":
        if reference_scores is None or reference_aams is None or reference_saliency is None:
            raise ValueError("selector='pair_aware' needs reference_scores, reference_aams and reference_saliency")
        present = present & thresholds.present(reference_scores)
        confidence = np.sqrt(confidence * sigmoid(reference_scores))
        match = 0.5 * (match + map_match(reference_saliency, reference_aams))
    ranking = w * confidence + (1.0 - w) * match
    candidates = np.flatnonzero(present)
    order = candidates[np.argsort(-ranking[candidates], kind="stable")][:top_k]
    return Explanation(order.tolist(), ranking[order].tolist())


def _select_by_concept(query_scores, query_aams, query_saliency, thresholds, w, reference_scores, reference_aams,
                       reference_saliency, relevance, presence, presence_weight, top_k) -> Explanation:
    if relevance is None or reference_scores is None:
        raise ValueError("selector='concept' needs relevance (concepts.concept_relevance) and reference_scores")
    if presence not in PRESENCE:
        raise ValueError(f"presence must be one of {PRESENCE}, got {presence!r}")
    if not presence_weight >= 0:
        raise ValueError(f"presence_weight must be >= 0, got {presence_weight}")
    relevance = np.asarray(relevance, np.float64)
    if relevance.shape != np.shape(query_scores):
        raise ValueError(f"relevance must be [A] = {np.shape(query_scores)}, got {relevance.shape}")
    encoded = np.isfinite(relevance)
    candidates = np.flatnonzero(encoded)
    if presence == "both":
        both = np.flatnonzero(thresholds.present(query_scores) & thresholds.present(reference_scores) & encoded)
        candidates = both if len(both) else candidates  # nothing predicted in both: every encoded attribute
    ranking = np.full(relevance.shape, -np.inf)
    if len(candidates):
        scale = max(float(np.max(np.abs(relevance[candidates]))), 1e-12)
        ranking[candidates] = relevance[candidates] / scale
        if presence == "soft":
            log_both = (np.log(sigmoid(query_scores)) + np.log(sigmoid(reference_scores)))
            ranking[candidates] += presence_weight * log_both[candidates]
        if w > 0:
            if reference_aams is None or reference_saliency is None:
                raise ValueError("selector='concept' with w > 0 needs reference_aams and reference_saliency")
            match = 0.5 * (map_match(query_saliency, query_aams) + map_match(reference_saliency, reference_aams))
            ranking[candidates] = (1.0 - w) * ranking[candidates] + w * match[candidates]
    order = candidates[np.argsort(-ranking[candidates], kind="stable")][:top_k]
    return Explanation(order.tolist(), ranking[order].tolist())
