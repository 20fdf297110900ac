"""Similarity functions between embeddings.

Every function here is pure, jit-able and broadcasts over leading dimensions. The saliency
engine calls a similarity as ``similarity(a[:, None, :], b[None, :, :]) -> [B, K]``, so any
user function with that broadcasting contract can replace :func:`cosine`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

SimilarityFn = Callable[[jax.Array, jax.Array], jax.Array]

def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """Scales ``x`` to unit L2 norm along ``axis``; a zero vector stays zero (never NaN).

    Computed stably at any scale: each vector is first divided by its largest absolute entry, so
    neither ``|x|^2`` of a vector of norm 1e20 (beyond float32) nor of a tiny one overflows or
    underflows. A vector holding NaN or an infinity gives NaN (it is never taken for a zero
    vector). The gradient is finite everywhere, including at zero.
    """
    x = jnp.asarray(x)
    scale = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=axis, keepdims=True))  # the result does not depend on it
    scaled = x / jnp.where((scale > 0) & jnp.isfinite(scale), scale, 1.0)
    sq = jnp.sum(jnp.square(scaled), axis=axis, keepdims=True)
    nonzero = ~(sq <= 0.0)  # True for NaN: non-finite vectors stay non-finite
    return jnp.where(nonzero, scaled * jax.lax.rsqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """Cosine similarity over the last axis: ``[..., D] x [..., D] -> [...]`` (broadcasting).

    A zero vector on either side gives similarity 0, never NaN, and finite gradients; the result
    does not depend on the vectors' scale (norms of 1e-30 or 1e30 included); a vector holding NaN
    or an infinity gives NaN, never a number that looks like a similarity.
    """
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"cosine: embedding dimensions differ: a has D={a.shape[-1]}, b has D={b.shape[-1]}"
        )
    return jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """Inner product over the last axis (for models whose embeddings are already normalised)."""
    return jnp.sum(a * b, axis=-1)


def pairwise_cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """All-pairs cosine similarity: ``a [N, D]``, ``b [K, D]`` -> ``[N, K]`` (one matrix product)."""
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"pairwise_cosine: expected a [N, D] and b [K, D], got {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"pairwise_cosine: embedding dimensions differ: a has D={a.shape[-1]}, b has D={b.shape[-1]}"
        )
    return l2_normalize(a) @ l2_normalize(b).T


def pairwise(similarity: SimilarityFn, a: jax.Array, b: jax.Array) -> jax.Array:
    """All-pairs similarity for any broadcasting ``similarity``: ``[N, D] x [K, D] -> [N, K]``.

    :func:`cosine` is computed as one matrix product of the normalised embeddings.
    """
    if similarity is cosine:
        return pairwise_cosine(a, b)
    return similarity(a[:, None, :], b[None, :, :])
