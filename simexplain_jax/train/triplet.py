"""Triplet losses with online mining over a batch (margin 0.2 as the paper).

Distances are Euclidean between L2-normalised embeddings. Given a distance matrix ``d [A, K]``
between anchors and candidates, a ``positive_mask`` and a ``negative_mask`` (both ``[A, K]``):

- ``mining="semi_hard"`` (FaceNet): for every anchor-positive pair, the closest negative that is
  farther than the positive; if none is, the farthest negative (the least violating one);
- ``mining="hard"`` (batch-hard): per anchor, its farthest positive against its closest negative;
- ``mining="all"``: every valid (anchor, positive, negative) triplet.

The loss is the mean of ``relu(d_ap - d_an + margin)`` over the triplets used (anchors without a
positive or a negative are skipped); ``fraction_active`` is the fraction of those with a
positive loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MININGS = ("semi_hard", "hard", "all")


def euclidean_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """``[A, D] x [K, D] -> [A, K]``; differentiable at 0 (a tiny floor under the square root)."""
    sq = jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * a @ b.T
    return jnp.sqrt(jnp.maximum(sq, 1e-12))


def label_masks(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Positive (same label, not itself) and negative (different label) masks ``[B, B]``."""
    same = labels[:, None] == labels[None, :]
    return same & ~jnp.eye(labels.shape[0], dtype=bool), ~same


def triplet_loss(distances, positive_mask, negative_mask, margin: float = 0.2, mining: str = "semi_hard"):
    """Returns ``(loss, fraction_active)`` (see the module docstring)."""
    if mining not in MININGS:
        raise ValueError(f"mining must be one of {MININGS}, got {mining!r}")
    d = distances
    big = jnp.asarray(1e9, d.dtype)
    has_negative = jnp.any(negative_mask, axis=1)
    if mining == "hard":
        d_ap = jnp.max(jnp.where(positive_mask, d, -big), axis=1)
        d_an = jnp.min(jnp.where(negative_mask, d, big), axis=1)
        valid = jnp.any(positive_mask, axis=1) & has_negative
        losses = jnp.maximum(d_ap - d_an + margin, 0.0)
    elif mining == "semi_hard":
        d_ap = d[:, :, None]  # [A, P, 1]
        d_an = d[:, None, :]  # [A, 1, K]
        neg = negative_mask[:, None, :]
        outside = neg & (d_an > d_ap)
        closest_outside = jnp.min(jnp.where(outside, d_an, big), axis=2)
        farthest = jnp.max(jnp.where(neg, d_an, -big), axis=2)
        chosen = jnp.where(jnp.any(outside, axis=2), closest_outside, farthest)
        valid = positive_mask & has_negative[:, None]
        losses = jnp.maximum(d - chosen + margin, 0.0)
    else:
        valid = positive_mask[:, :, None] & negative_mask[:, None, :]
        losses = jnp.maximum(d[:, :, None] - d[:, None, :] + margin, 0.0)
    count = jnp.maximum(jnp.sum(valid), 1)
    loss = jnp.sum(jnp.where(valid, losses, 0.0)) / count
    active = jnp.sum(valid & (losses > 0)) / count
    return loss, active
