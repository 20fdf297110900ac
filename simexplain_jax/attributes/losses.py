"""Losses of the attribute predictor (docs/method.md, "The attribute predictor and the Eq. 2 loss").

Classification (``classification_loss``):
- ``"sigmoid_bce"`` (the default): independent sigmoid + binary cross-entropy per attribute.
  It is the standard multi-label loss and gives a per-attribute probability, which is what the
  presence thresholds of the explanation step calibrate;
- ``"softmax_smoothl1"`` (the reference code): SmoothL1 between softmax over attributes of the
  scores and ``y / |A_q|`` (the image's attributes sharing mass 1). It ties attributes together
  (one attribute's score lowers the others' probabilities).

Saliency matching (``saliency_matching_loss``, the paper's Eq. 2): each cached saliency map S_k
of image q (against a positive reference) is resized to the activation-map grid, normalised and
softmaxed into ``P_k``; ``L_hm = mean_k min(1, min_{a in A_q} ||H_a - P_k||_2)`` with ``H_a`` the
spatial softmax of attribute a's activation map: every saliency map must be matched by the map of
at least one attribute the image has. Raw RISE maps are about N times a similarity, which makes
``softmax(S)`` one-hot; by default each map is standardised (zero mean, unit variance over
positions) before the softmax (``normalize="zscore"``); ``normalize="raw"`` keeps the reference
behaviour.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

CLASSIFICATION_LOSSES = ("sigmoid_bce", "softmax_smoothl1")
SALIENCY_NORMALIZATIONS = ("zscore", "raw")


def classification_loss(scores: jax.Array, labels: jax.Array, kind: str = "sigmoid_bce") -> jax.Array:
    """Mean loss of ``scores [B, A]`` against multi-hot ``labels [B, A]``."""
    labels = labels.astype(jnp.float32)
    if kind == "sigmoid_bce":
        return jnp.mean(optax.sigmoid_binary_cross_entropy(scores, labels))
    if kind == "softmax_smoothl1":
        target = labels / jnp.maximum(jnp.sum(labels, axis=-1, keepdims=True), 1.0)
        return jnp.mean(optax.huber_loss(jax.nn.softmax(scores, axis=-1), target, delta=1.0))
    raise ValueError(f"classification loss must be one of {CLASSIFICATION_LOSSES}, got {kind!r}")


def saliency_targets(maps: jax.Array, normalize: str = "zscore") -> jax.Array:
    """``maps [..., h, w]`` (already at the activation-map grid) -> distributions ``[..., h*w]``."""
    if normalize not in SALIENCY_NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {SALIENCY_NORMALIZATIONS}, got {normalize!r}")
    flat = maps.reshape(*maps.shape[:-2], -1)
    if normalize == "zscore":
        flat = (flat - jnp.mean(flat, -1, keepdims=True)) / (jnp.std(flat, -1, keepdims=True) + 1e-6)
    return jax.nn.softmax(flat, axis=-1)


def saliency_matching_loss(attention: jax.Array, targets: jax.Array, valid: jax.Array, labels: jax.Array) -> jax.Array:
    """Eq. 2. ``attention [B, A, P]`` (spatial softmax of the AAMs), ``targets [B, K, P]`` (see
    ``saliency_targets``), ``valid [B, K]`` (which cached maps exist), ``labels [B, A]``.

    Returns the mean over valid maps of ``min(1, min over the image's attributes of ||H_a - P_k||)``
    (0 when no map is valid).
    """
    distances = jnp.sqrt(jnp.maximum(jnp.sum((attention[:, None, :, :] - targets[:, :, None, :]) ** 2, -1), 1e-12))
    distances = jnp.where(labels[:, None, :].astype(bool), distances, jnp.inf)  # [B, K, A]
    per_map = jnp.minimum(1.0, jnp.min(distances, axis=-1))
    valid = valid.astype(jnp.float32)
    return jnp.sum(per_map * valid) / jnp.maximum(jnp.sum(valid), 1.0)
