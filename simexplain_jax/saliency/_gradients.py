"""White-box baselines: gradient x input and integrated gradients of the similarity.

Both differentiate ``s(q) = similarity(f(q), r)`` with respect to the query and sum the
attribution over channels to give an ``[H, W]`` map per reference embedding. Both are
deterministic: ``key`` is accepted, like every method's, and unused. Integrated gradients
(Sundararajan et al. 2017) average the gradient along the straight path from a baseline (default 0, the mean colour
in normalised space) with the trapezoid rule over ``num_steps`` intervals, so the attributions
sum to ``s(q) - s(baseline)`` up to the quadrature error (completeness). Completeness needs the
similarity to be smooth along the path: cosine is discontinuous at a zero embedding, so a
baseline that the model maps to exactly 0 (a bias-free model at 0) breaks it.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from simexplain_jax import checks, engine
from simexplain_jax.engine import EmbedFn
from simexplain_jax.similarity import SimilarityFn, cosine

DEFAULTS = dict(similarity=cosine, compute_dtype="float32")
INTEGRATED_DEFAULTS = dict(num_steps=64, batch_size=64, similarity=cosine, compute_dtype="float32")


def _score_grads(embed_fn, images, reference, similarity, batch_size):
    """Gradients ``[N, H, W, C]`` of each image's similarity to ``reference [D]`` (chunked)."""

    def total(batch):
        return jnp.sum(similarity(embed_fn(batch), reference[None]))

    return engine.embed_in_chunks(jax.grad(total), images, batch_size)


def options(similarity=cosine, compute_dtype="float32") -> dict:
    checks.check_similarity(similarity)
    return dict(similarity=similarity, compute_dtype=checks.check_compute_dtype(compute_dtype))


def integrated_options(num_steps=64, batch_size=64, similarity=cosine, compute_dtype="float32") -> dict:
    checks.check_similarity(similarity)
    return dict(num_steps=checks.check_positive_int(num_steps, "num_steps"),
                batch_size=checks.check_batch_size(batch_size), similarity=similarity,
                compute_dtype=checks.check_compute_dtype(compute_dtype))


def gradient_core(embed_fn, query, references, key=None, *, similarity, compute_dtype="float32"):
    """``[K, H, W]`` gradient x input maps for ``references [K, D]``."""
    embed_fn = engine.in_compute_dtype(embed_fn, compute_dtype)
    checks.check_embedding_dims(checks.embedding_dim(embed_fn, query.shape), references)

    def one(reference):
        return jnp.sum(_score_grads(embed_fn, query[None], reference, similarity, 1)[0] * query, axis=-1)

    return jax.vmap(one)(references)


def integrated_gradients_core(embed_fn, query, references, key=None, *, baseline=None, num_steps, batch_size,
                              similarity, compute_dtype="float32"):
    """``[K, H, W]`` integrated-gradients maps for ``references [K, D]`` (baseline default: zeros)."""
    embed_fn = engine.in_compute_dtype(embed_fn, compute_dtype)
    checks.check_embedding_dims(checks.embedding_dim(embed_fn, query.shape), references)
    baseline = jnp.zeros_like(query) if baseline is None else baseline
    alphas = jnp.linspace(0.0, 1.0, num_steps + 1)
    path = baseline[None] + alphas[:, None, None, None] * (query - baseline)[None]
    weights = jnp.full((num_steps + 1,), 1.0 / num_steps).at[0].multiply(0.5).at[-1].multiply(0.5)

    def one(reference):
        average = jnp.tensordot(weights, _score_grads(embed_fn, path, reference, similarity, batch_size), axes=1)
        return jnp.sum(average * (query - baseline), axis=-1)

    return jax.lax.map(one, references)


_gradient_jit = jax.jit(gradient_core, static_argnames=tuple(DEFAULTS))
_integrated_jit = jax.jit(integrated_gradients_core, static_argnames=tuple(INTEGRATED_DEFAULTS))


def gradient(embed_fn: EmbedFn, query: ArrayLike, reference_embeddings: ArrayLike, *, key: Optional[jax.Array] = None,
             similarity: SimilarityFn = cosine, compute_dtype: str = "float32") -> jax.Array:
    """Gradient x input, summed over channels: ``[D]`` gives ``[H, W]``, ``[K, D]`` gives ``[K, H, W]``.

    ``compute_dtype``: the dtype of the model's forward and backward pass (``"float32"`` or
    ``"bfloat16"``, as in ``sx.saliency.rise``); the gradient is returned in float32.
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_reference_embeddings(reference_embeddings)
    maps = _gradient_jit(embed_fn, query, refs, **options(similarity, compute_dtype))
    return maps[0] if single else maps


def integrated_gradients(embed_fn: EmbedFn, query: ArrayLike, reference_embeddings: ArrayLike, *,
                         key: Optional[jax.Array] = None, baseline: Optional[ArrayLike] = None,
                         num_steps: int = 64, batch_size: int = 64, similarity: SimilarityFn = cosine,
                         compute_dtype: str = "float32") -> jax.Array:
    """Integrated gradients from ``baseline`` (default zeros; a scalar, ``[C]`` or ``[H, W, C]``),
    summed over channels: ``[D]`` gives ``[H, W]``, ``[K, D]`` gives ``[K, H, W]``. ``compute_dtype``
    as in :func:`gradient` (completeness then holds to bfloat16's precision, not float32's)."""
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_reference_embeddings(reference_embeddings)
    static = integrated_options(num_steps, batch_size, similarity, compute_dtype)
    if baseline is not None:
        baseline = jnp.broadcast_to(jnp.asarray(baseline, jnp.float32), query.shape)
    maps = _integrated_jit(embed_fn, query, refs, baseline=baseline, **static)
    return maps[0] if single else maps
