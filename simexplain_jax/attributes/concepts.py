"""Concept relevance: which attributes the similarity model's embedding uses for a match.

The paper's selector scores *where* an attribute is (its activation map against the saliency
map). Every attribute of the object that makes two images match sits in the same place, so
location cannot tell "red" from "square". What the similarity model *encodes* can: this module
measures how much of ``s(q, r)`` each attribute's direction in the embedding accounts for.

1. ``fit_concepts(embeddings, labels, split=...)``: one unit direction ``u_a`` per attribute in
   the L2-normalised embedding space, from a linear probe fitted on training or validation
   images with attribute labels (never test): ridge regression of the centred labels on the
   centred embeddings, ``W = (X^T X + l n I)^{-1} X^T Y``, ``u_a = W_a / |W_a|`` (a multi-output
   least-squares probe: unlike a difference of class means, it separates attributes that occur
   together, so a filler that merely co-occurs with an encoded attribute gets its own, weak,
   direction). Attributes without both positive and negative examples get no direction.
2. ``concept_relevance(concepts, query_embeddings, reference_embeddings, scorer=...)``, batched
   over pairs, ``[P, A]``. With ``q``, ``r`` the normalised embeddings, ``s = q . r`` (cosine),
   ``p_q = q . u_a`` and ``p_r = r . u_a``:

   - ``"product"`` (default): ``p_q p_r``, the part of ``q . r`` along ``u_a`` (an exact
     decomposition of ``s`` if the directions were orthonormal).
   - ``"removal"``: the similarity lost when the concept's component is removed from both
     embeddings, ``s - cos(P_a q, P_a r)`` with ``P_a = I - u_a u_a^T``; in closed form
     ``cos(P_a q, P_a r) = (s - p_q p_r) / sqrt((1 - p_q^2) (1 - p_r^2))``.

   The defaults (``product``, ``ridge = 0.01``) were chosen on validation pairs of the 64 px
   shapes benchmark, where ``product`` named the class attribute first for 94% of pairs against
   91% for ``removal`` (``docs/attributes_shapes64.md`` has the test numbers and the command).
3. ``query_removal_drop``: a faithfulness check that needs no re-rendering, so it runs on any
   dataset: the similarity drop when ``u_a``'s component is removed from the query's embedding
   alone, ``s - cos(P_a q, r) = s - (s - p_q p_r) / sqrt(1 - p_q^2)``.

Everything works for any ``embed_fn`` (fit the concepts with the embeddings of the space the pair
is compared in: a type-aware model's condition space, say) and any dataset with attribute labels.
No per-pair training: a fit is one ``[D, D]`` solve; relevance is a few ``[P, D] @ [D, A]`` products.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple, Optional

import numpy as np

from simexplain_jax.attributes.calibration import CALIBRATION_SPLITS
from simexplain_jax.io import write_json_atomic

SCORERS = ("product", "removal")
_TINY = 1e-12


class Concepts(NamedTuple):
    directions: np.ndarray  # [A, D] unit vectors (zero where valid is False)
    valid: np.ndarray  # [A] bool: the attribute had positive and negative examples
    split: str  # the split the probe was fitted on ("train" or "validation")


def save_concepts(path: str | os.PathLike, concepts: Concepts, *, model: str, ridge: float) -> None:
    """Writes ``concepts`` to ``path`` (JSON, atomically) with the similarity model they were fitted for.

    Args:
      path: the file to write (``train_attributes`` writes ``concepts.json`` beside the predictor).
      concepts: what ``fit_concepts`` returned.
      model: the similarity model's fingerprint (``saliency.cache.fingerprint`` of its ``embed_fn``).
      ridge: the probe's ridge penalty, recorded.
    """
    write_json_atomic(path, {"model": model, "split": concepts.split, "ridge": float(ridge),
                             "valid": np.asarray(concepts.valid, bool).tolist(),
                             "directions": np.asarray(concepts.directions, np.float32).tolist()})


def load_concepts(path: str | os.PathLike, *, model: str, num_attributes: Optional[int] = None) -> Concepts:
    """Reads what ``save_concepts`` wrote, for the similarity model ``model``.

    Args:
      path: the concepts file.
      model: the fingerprint of the similarity model that will use them.
      num_attributes: the number of attributes expected, or None.

    Returns:
      The ``Concepts``.

    Raises:
      FileNotFoundError: no such file.
      ValueError: a malformed file, another number of attributes, or directions fitted for another
        similarity model (both fingerprints named).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"concepts file {path} not found")
    try:
        with open(path) as f:
            data = json.load(f)
        directions = np.asarray(data["directions"], np.float32)
        valid = np.asarray(data["valid"], bool)
        saved, split = str(data["model"]), data["split"]
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"concepts file {path} is not a concepts JSON: {type(err).__name__}: {err}") from None
    if directions.ndim != 2 or valid.shape != directions.shape[:1] or not np.isfinite(directions).all():
        raise ValueError(f"concepts file {path}: directions must be a finite [A, D] matrix with one valid flag each")
    if split not in CALIBRATION_SPLITS:
        raise ValueError(f"concepts file {path}: split must be one of {CALIBRATION_SPLITS}, got {split!r}")
    if num_attributes is not None and len(valid) != num_attributes:
        raise ValueError(f"concepts file {path} holds {len(valid)} attributes, expected {num_attributes}")
    if saved != model:
        raise ValueError(f"concepts file {path} was fitted for the similarity model with fingerprint {saved}, "
                         f"not for this one ({model}); refit them for this model (train_attributes)")
    return Concepts(directions, valid, split)


def _normalise(embeddings: np.ndarray, name: str) -> np.ndarray:
    embeddings = np.asarray(embeddings, np.float64)
    if embeddings.ndim != 2 or embeddings.shape[1] < 1:
        raise ValueError(f"{name} must be [N, D], got shape {embeddings.shape}")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError(f"{name} contain NaN or infinite values")
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return np.where(norms > _TINY, embeddings / np.maximum(norms, _TINY), 0.0)


def fit_concepts(embeddings, labels, *, split: str, ridge: float = 1e-2) -> Concepts:
    """Concept directions from ``embeddings [N, D]`` (any scale: they are L2-normalised here,
    as cosine similarity sees them) and multi-hot ``labels [N, A]`` of training or validation
    images. ``ridge`` is the penalty per example (``l`` above)."""
    if split not in CALIBRATION_SPLITS:
        raise ValueError(f"concepts are fitted on {CALIBRATION_SPLITS} data only, not {split!r}")
    x = _normalise(embeddings, "embeddings")
    y = np.asarray(labels)
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be [N, A] with N = {x.shape[0]}, got shape {y.shape}")
    if not ridge > 0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    y = y.astype(np.float64)
    positives = y.sum(0)
    valid = (positives > 0) & (positives < len(y))
    xc, yc = x - x.mean(0), y - y.mean(0)
    weights = np.linalg.solve(xc.T @ xc + ridge * len(x) * np.eye(x.shape[1]), xc.T @ yc)  # [D, A]
    norms = np.linalg.norm(weights, axis=0)
    valid &= norms > _TINY
    directions = np.where(valid[:, None], weights.T / np.maximum(norms, _TINY)[:, None], 0.0)
    return Concepts(directions.astype(np.float32), valid, split)


def _projections(concepts: Concepts, query_embeddings, reference_embeddings):
    q = _normalise(query_embeddings, "query_embeddings")
    r = _normalise(reference_embeddings, "reference_embeddings")
    if q.shape != r.shape:
        raise ValueError(f"query_embeddings {q.shape} and reference_embeddings {r.shape} must match (one row per pair)")
    if q.shape[1] != concepts.directions.shape[1]:
        raise ValueError(f"embeddings have D={q.shape[1]} but the concepts were fitted with "
                         f"D={concepts.directions.shape[1]}")
    u = concepts.directions.astype(np.float64)
    s = np.sum(q * r, axis=1, keepdims=True)  # [P, 1]
    return s, q @ u.T, r @ u.T  # [P, 1], [P, A], [P, A]


def concept_relevance(concepts: Concepts, query_embeddings, reference_embeddings, *,
                      scorer: str = "product") -> np.ndarray:
    """``[P, A]``: each attribute's share of the similarity of each pair (see the module
    docstring); ``-inf`` for attributes without a direction."""
    if scorer not in SCORERS:
        raise ValueError(f"scorer must be one of {SCORERS}, got {scorer!r}")
    s, pq, pr = _projections(concepts, query_embeddings, reference_embeddings)
    if scorer == "product":
        relevance = pq * pr
    else:
        rest = np.sqrt(np.maximum((1.0 - pq**2) * (1.0 - pr**2), 0.0))
        relevance = s - np.where(rest > _TINY, (s - pq * pr) / np.maximum(rest, _TINY), 0.0)
    return np.where(concepts.valid[None], relevance, -np.inf)


def query_removal_drop(concepts: Concepts, query_embeddings, reference_embeddings) -> np.ndarray:
    """``[P, A]``: ``s(q, r) - cos(P_a q, r)``, the similarity lost when attribute a's direction is
    removed from the query's embedding only (a faithfulness check without re-rendering);
    ``-inf`` for attributes without a direction."""
    s, pq, pr = _projections(concepts, query_embeddings, reference_embeddings)
    rest = np.sqrt(np.maximum(1.0 - pq**2, 0.0))
    drop = s - np.where(rest > _TINY, (s - pq * pr) / np.maximum(rest, _TINY), 0.0)
    return np.where(concepts.valid[None], drop, -np.inf)
