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
from simexplain_jax.saliency._options import (MethodOptions, SaliencyResult, options_class, resolve, result, set_field,
                                              squeeze)
from simexplain_jax.similarity import SimilarityFn, cosine



@options_class("gradient", references="embeddings", queries_per_device=16)
class Gradient(MethodOptions):
    """Options of gradient x input (:func:`gradient`).

    Attributes:
      similarity: broadcasting ``[..., D] x [..., D] -> [...]``.
      compute_dtype: the dtype of the model's forward and backward pass, as in :class:`Rise`;
        the gradient is returned in float32.
    """

    similarity: SimilarityFn = cosine
    compute_dtype: str = "float32"

    def __post_init__(self):
        checks.check_similarity(self.similarity)
        set_field(self, "compute_dtype", checks.check_compute_dtype(self.compute_dtype))

    def core(self, embed_fn, query, references, key=None) -> SaliencyResult:
        return gradient_core(embed_fn, query, references, key, self)


@options_class("integrated_gradients", references="embeddings")
class IntegratedGradients(MethodOptions):
    """Options of integrated gradients (:func:`integrated_gradients`).

    Attributes:
      num_steps: trapezoid intervals along the path from the baseline to the query.
      batch_size: path points differentiated per compiled chunk.
      similarity: broadcasting ``[..., D] x [..., D] -> [...]``.
      compute_dtype: as in :class:`Gradient` (completeness then holds to bfloat16's precision).
    """

    num_steps: int = 64
    batch_size: int = 64
    similarity: SimilarityFn = cosine
    compute_dtype: str = "float32"

    def __post_init__(self):
        checks.check_similarity(self.similarity)
        for name, value in dict(num_steps=checks.check_positive_int(self.num_steps, "num_steps"),
                                batch_size=checks.check_batch_size(self.batch_size),
                                compute_dtype=checks.check_compute_dtype(self.compute_dtype)).items():
            set_field(self, name, value)

    def core(self, embed_fn, query, references, key=None, *, baseline=None) -> SaliencyResult:
        return integrated_gradients_core(embed_fn, query, references, key, self, baseline=baseline)


def _score_grads(embed_fn, images, reference, similarity, batch_size):
    """Gradients ``[N, H, W, C]`` of each image's similarity to ``reference [D]`` (chunked)."""

    def total(batch):
        return jnp.sum(similarity(embed_fn(batch), reference[None]))

    return engine.embed_in_chunks(jax.grad(total), images, batch_size)


def gradient_core(embed_fn, query, references, key, options: Gradient) -> SaliencyResult:
    """``[K, H, W]`` gradient x input maps for ``references [K, D]``; traceable."""
    embed_fn = engine.in_compute_dtype(embed_fn, options.compute_dtype)
    checks.check_embedding_dims(checks.embedding_dim(embed_fn, query.shape), references)

    def one(reference):
        return jnp.sum(_score_grads(embed_fn, query[None], reference, options.similarity, 1)[0] * query, axis=-1)

    return result(jax.vmap(one)(references), 1)


def integrated_gradients_core(embed_fn, query, references, key, options: IntegratedGradients, *,
                              baseline=None) -> SaliencyResult:
    """``[K, H, W]`` integrated-gradients maps for ``references [K, D]`` (baseline default: zeros); traceable."""
    num_steps = options.num_steps
    embed_fn = engine.in_compute_dtype(embed_fn, options.compute_dtype)
    checks.check_embedding_dims(checks.embedding_dim(embed_fn, query.shape), references)
    baseline = jnp.zeros_like(query) if baseline is None else baseline
    alphas = jnp.linspace(0.0, 1.0, num_steps + 1)
    path = baseline[None] + alphas[:, None, None, None] * (query - baseline)[None]
    weights = jnp.full((num_steps + 1,), 1.0 / num_steps).at[0].multiply(0.5).at[-1].multiply(0.5)

    def one(reference):
        grads = _score_grads(embed_fn, path, reference, options.similarity, options.batch_size)
        return jnp.sum(jnp.tensordot(weights, grads, axes=1) * (query - baseline), axis=-1)

    return result(jax.lax.map(one, references), num_steps + 1)


_gradient_jit = jax.jit(gradient_core)
_integrated_jit = jax.jit(integrated_gradients_core)


def gradient(embed_fn: EmbedFn, query: ArrayLike, reference_embeddings: ArrayLike, *, key: Optional[jax.Array] = None,
             options: Optional[Gradient] = None, **overrides) -> SaliencyResult:
    """Gradient x input of the similarity, summed over channels.

    Args:
      embed_fn, query: as in ``sx.saliency.rise``.
      reference_embeddings: ``[D]`` (gives ``[H, W]`` maps) or ``[K, D]`` (gives ``[K, H, W]``).
      key: accepted, like every method's, and unused.
      options: a :class:`Gradient` (default ``Gradient()``).
      **overrides: options replacing those of ``options``.

    Returns:
      ``SaliencyResult(maps, passes, error)``: ``passes`` 1, ``error`` NaN.
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_reference_embeddings(reference_embeddings)
    options = resolve(Gradient, options, overrides)
    return squeeze(_gradient_jit(embed_fn, query, refs, None, options), single)


def integrated_gradients(embed_fn: EmbedFn, query: ArrayLike, reference_embeddings: ArrayLike, *,
                         key: Optional[jax.Array] = None, baseline: Optional[ArrayLike] = None,
                         options: Optional[IntegratedGradients] = None, **overrides) -> SaliencyResult:
    """Integrated gradients of the similarity from a baseline, summed over channels.

    Args:
      embed_fn, query: as in ``sx.saliency.rise``.
      reference_embeddings: ``[D]`` (gives ``[H, W]`` maps) or ``[K, D]`` (gives ``[K, H, W]``).
      key: accepted, like every method's, and unused.
      baseline: the path's start (default zeros; a scalar, ``[C]`` or ``[H, W, C]``).
      options: an :class:`IntegratedGradients` (default ``IntegratedGradients()``).
      **overrides: options replacing those of ``options``, e.g. ``num_steps=32``.

    Returns:
      ``SaliencyResult(maps, passes, error)``: ``passes`` the path points differentiated, ``error`` NaN.
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_reference_embeddings(reference_embeddings)
    options = resolve(IntegratedGradients, options, overrides)
    if baseline is not None:
        baseline = jnp.broadcast_to(jnp.asarray(baseline, jnp.float32), query.shape)
    return squeeze(_integrated_jit(embed_fn, query, refs, None, options, baseline=baseline), single)
