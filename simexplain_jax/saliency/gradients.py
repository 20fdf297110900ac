"""White-box baselines: gradient x input and integrated gradients of the similarity.

Both differentiate ``s(q) = similarity(f(q), r)`` with respect to the query and sum the
attribution over channels to give an ``[H, W]`` map. Integrated gradients (Sundararajan et al.
2017) average the gradient along the straight path from a baseline (default 0, the mean colour
in normalised space) with the trapezoid rule over ``num_steps`` intervals, so the attributions
sum to ``s(q) - s(baseline)`` up to the quadrature error (completeness). Completeness needs the
similarity to be smooth along the path: cosine is discontinuous at a zero embedding, so a
baseline that the model maps to exactly 0 (a bias-free model at 0) breaks it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from simexplain_jax.saliency import _common
from simexplain_jax.similarity import SimilarityFn, cosine


def _score_grads(embed_fn, images, reference, similarity, batch_size):
    """Gradients ``[N, H, W, C]`` of each image's similarity to ``reference [D]`` (chunked)."""

    def total(batch):
        return jnp.sum(similarity(embed_fn(batch), reference[None]))

    grad = jax.grad(total)
    n = images.shape[0]
    batch_size = max(1, min(batch_size, n))
    chunks = -(-n // batch_size)
    padded = jnp.pad(images, [(0, chunks * batch_size - n), (0, 0), (0, 0), (0, 0)])
    out = jax.lax.map(grad, padded.reshape(chunks, batch_size, *images.shape[1:]))
    return out.reshape(chunks * batch_size, *images.shape[1:])[:n]


@jax.jit(static_argnames=("similarity",))
def _gradient_jit(embed_fn, query, reference, *, similarity):
    dim = _common.embedding_dim(embed_fn, query.shape)
    _common.check_embedding_dims(dim, reference[None], name="reference_embedding")
    grads = _score_grads(embed_fn, query[None], reference, similarity, 1)[0]
    return jnp.sum(grads * query, axis=-1)


@jax.jit(static_argnames=("num_steps", "batch_size", "similarity"))
def _integrated_jit(embed_fn, query, reference, baseline, *, num_steps, batch_size, similarity):
    dim = _common.embedding_dim(embed_fn, query.shape)
    _common.check_embedding_dims(dim, reference[None], name="reference_embedding")
    alphas = jnp.linspace(0.0, 1.0, num_steps + 1)
    path = baseline[None] + alphas[:, None, None, None] * (query - baseline)[None]
    grads = _score_grads(embed_fn, path, reference, similarity, batch_size)
    weights = jnp.full((num_steps + 1,), 1.0 / num_steps).at[0].multiply(0.5).at[-1].multiply(0.5)
    average = jnp.tensordot(weights, grads, axes=1)
    return jnp.sum(average * (query - baseline), axis=-1)


def _check(embed_fn, query, reference_embedding, similarity):
    embed_fn = _common.as_pytree_fn(embed_fn)
    query = _common.check_image(query, "query")
    if not hasattr(reference_embedding, "shape"):
        reference_embedding = np.asarray(reference_embedding)
    if reference_embedding.ndim != 1:
        raise ValueError(f"reference_embedding must be one embedding [D], got shape {tuple(reference_embedding.shape)}")
    _common.check_similarity(similarity)
    return embed_fn, query, jnp.asarray(reference_embedding, jnp.float32)


def gradient(embed_fn, query, reference_embedding, *, similarity: SimilarityFn = cosine) -> jax.Array:
    """Gradient x input, summed over channels: ``[H, W]``."""
    embed_fn, query, reference = _check(embed_fn, query, reference_embedding, similarity)
    return _gradient_jit(embed_fn, query, reference, similarity=similarity)


def integrated_gradients(embed_fn, query, reference_embedding, *, baseline=None, num_steps: int = 64,
                         batch_size: int = 64, similarity: SimilarityFn = cosine) -> jax.Array:
    """Integrated gradients from ``baseline`` (default zeros), summed over channels: ``[H, W]``."""
    embed_fn, query, reference = _check(embed_fn, query, reference_embedding, similarity)
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    baseline = jnp.zeros_like(query) if baseline is None else jnp.broadcast_to(jnp.asarray(baseline, jnp.float32),
                                                                               query.shape)
    return _integrated_jit(embed_fn, query, reference, baseline, num_steps=int(num_steps),
                           batch_size=_common.check_batch_size(batch_size), similarity=similarity)
