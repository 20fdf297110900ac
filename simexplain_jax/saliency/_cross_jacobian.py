"""White-box second order: the integrated cross-Jacobian (docs/method.md, "Integrated cross-Jacobian").

For a similarity that is the inner product of two embeddings, ``s(q, r) = e(q) . e(r)`` (``e``
L2-normalised for the cosine), the mixed derivative is ``d^2 s / dq dr = J_q^T J_r``. Integrating
it along straight paths from a baseline ``b`` to each image, independently for the two images,
factorises into one integral per image:

    R_d(x) = (x - b) * int_0^1 d e_d(b + a (x - b)) / dx da          (summed over channels),

the integrated gradients of each embedding dimension d. Summed over the pixels of a cell c,
``R_dc``; the correspondence is ``C_cc' = sum_d R^q_dc R^r_dc'``. By completeness its total is
``(e(q) - e(b)) . (e(r) - e(b))``, the similarity less the terms that involve the baseline. The
path integral is a midpoint Riemann sum of ``num_steps`` points; each point costs one forward
pass and D vector-Jacobian products.

References:
  Moeller et al., "Explaining Caption-Image Interactions in CLIP Models with Second-Order
  Attributions" (exCLIP), TMLR 2025.
  Sundararajan, Taly and Yan, "Axiomatic Attribution for Deep Networks", ICML 2017.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from simexplain_jax import checks, engine
from simexplain_jax.engine import EmbedFn
from simexplain_jax.saliency._options import MethodOptions, SaliencyResult, options_class, resolve, result, set_field
from simexplain_jax.saliency._rise_pair import cell_pooling, check_grid
from simexplain_jax.saliency._second_order import PairResult, first_order_maps
from simexplain_jax.similarity import SimilarityFn, cosine, dot, l2_normalize

_HIGHEST = jax.lax.Precision.HIGHEST


def cell_attributions(embed_fn, image, baseline, *, num_steps, grid_size, batch_size, normalize):
    """``R [D, g, g]``: integrated gradients of each embedding dimension, summed over each cell."""
    def embedding(x):
        out = embed_fn(x[None])[0]
        return l2_normalize(out) if normalize else out

    alphas = (jnp.arange(num_steps, dtype=jnp.float32) + 0.5) / num_steps
    # which cell each pixel row / column is in (attributions are summed over a cell, not averaged)
    band_h = (cell_pooling(image.shape[0], grid_size) > 0).astype(jnp.float32)
    band_w = (cell_pooling(image.shape[1], grid_size) > 0).astype(jnp.float32)

    def at(alpha):
        jacobian = jax.jacrev(embedding)(baseline + alpha * (image - baseline))  # [D, H, W, C]
        return jnp.sum(jacobian * (image - baseline), axis=-1)  # [D, H, W]

    steps = jax.lax.map(at, alphas, batch_size=batch_size)  # [S, D, H, W]
    per_pixel = steps.mean(axis=0)
    return jnp.einsum("dhw,hc,we->dce", per_pixel, band_h, band_w, precision=_HIGHEST)


@options_class("integrated_cross_jacobian", references="images", second_order=True)
class IntegratedCrossJacobian(MethodOptions):
    """Options of the integrated cross-Jacobian (:func:`integrated_cross_jacobian`).

    Attributes:
      num_steps: points of the midpoint rule along each path.
      grid_size: the correspondence is over ``grid_size x grid_size`` cells per image.
      batch_size: path points differentiated together.
      similarity: ``sx.similarity.cosine`` (the embeddings' directions) or ``dot``.
      compute_dtype: the forward and backward passes' dtype.
    """

    num_steps: int = 16
    grid_size: int = 8
    batch_size: int = 4
    similarity: SimilarityFn = cosine
    compute_dtype: str = "float32"

    def __post_init__(self):
        if self.similarity is not cosine and self.similarity is not dot:
            raise ValueError("the integrated cross-Jacobian is defined for similarity=cosine or dot, "
                             f"got {getattr(self.similarity, '__name__', self.similarity)!r}")
        for name, value in dict(num_steps=checks.check_positive_int(self.num_steps, "num_steps"),
                                grid_size=checks.check_positive_int(self.grid_size, "grid_size"),
                                batch_size=checks.check_batch_size(self.batch_size),
                                compute_dtype=checks.check_compute_dtype(self.compute_dtype)).items():
            set_field(self, name, value)

    def passes_per_pair(self, dim: int) -> int:
        """A vector-Jacobian product per embedding dimension, path point and image."""
        return 2 * self.num_steps * dim

    def core(self, embed_fn, query, references, key) -> SaliencyResult:
        """``[K, H, W]`` query maps and ``[K, g, g, g, g]`` correspondences of ``query`` with each of
        ``references [K, H, W, C]``, from the zero baseline; the query's attributions are computed
        once for all K (traceable)."""
        attribute = _attribute(engine.in_compute_dtype(embed_fn, self.compute_dtype), self)
        baseline = jnp.zeros(query.shape, jnp.float32)
        rq = attribute(query, baseline)
        corr = jax.lax.map(lambda r: jnp.einsum("dab,dce->abce", rq, attribute(r, baseline), precision=_HIGHEST),
                           references)
        maps = jax.vmap(lambda c: first_order_maps(c, query.shape, references.shape[1:])[0])(corr)
        return result(maps, self.passes_per_pair(rq.shape[0]), correspondence=corr)


def _attribute(embed_fn, options: IntegratedCrossJacobian):
    return functools.partial(cell_attributions, embed_fn, num_steps=options.num_steps, grid_size=options.grid_size,
                             batch_size=options.batch_size, normalize=options.similarity is cosine)


@jax.jit
def _cross_jacobian_jit(embed_fn, queries, references, baseline, options):
    embed_fn = engine.in_compute_dtype(embed_fn, options.compute_dtype)
    attribute = _attribute(embed_fn, options)

    def one(args):
        query, reference = args
        rq, rr = attribute(query, baseline), attribute(reference, baseline)
        corr = jnp.einsum("dab,dce->abce", rq, rr, precision=_HIGHEST)
        query_map, reference_map = first_order_maps(corr, query.shape, reference.shape)
        e = embed_fn(jnp.stack([query, reference]))
        return corr, query_map, reference_map, options.similarity(e[0], e[1])

    return jax.lax.map(one, (queries, references))


def integrated_cross_jacobian(embed_fn: EmbedFn, query: ArrayLike, reference: ArrayLike, *,
                              key: Optional[jax.Array] = None, baseline: Optional[ArrayLike] = None,
                              options: Optional[IntegratedCrossJacobian] = None, **overrides) -> PairResult:
    """Second-order explanation of a pair by its integrated cross-Jacobian (module docstring).

    Args:
      embed_fn: pure, differentiable ``images [B, H, W, C] -> [B, D]``.
      query: ``[H, W, C]``, or ``[P, H, W, C]`` for P pairs.
      reference: one image per query, of the query's shape.
      key: unused (deterministic); accepted like every method's.
      baseline: the path's start: a scalar, ``[C]`` or ``[H, W, C]`` (default zeros).
      options: an :class:`IntegratedCrossJacobian` (default ``IntegratedCrossJacobian()``).
      **overrides: options replacing those of ``options``, e.g. ``num_steps=32``.

    Returns:
      :class:`PairResult`; ``passes`` counts vector-Jacobian products per pair (2 x num_steps x D).
    """
    del key
    embed_fn = checks.as_pytree_fn(embed_fn)
    options = resolve(IntegratedCrossJacobian, options, overrides)
    queries, single = checks.check_image_or_batch(query, "query")
    references, _ = checks.check_image_or_batch(reference, "reference")
    if references.shape != queries.shape:
        raise ValueError(f"reference must be one image per query, of the query's shape: {tuple(queries.shape)} "
                         f"and {tuple(references.shape)}")
    check_grid(queries.shape[1:], options.grid_size)
    base = jnp.broadcast_to(jnp.asarray(0.0 if baseline is None else baseline, jnp.float32), queries.shape[1:])
    dim = checks.embedding_dim(embed_fn, queries.shape[1:])
    corr, query_map, reference_map, sim = _cross_jacobian_jit(embed_fn, queries, references, base, options)
    if single:
        corr, query_map, reference_map, sim = corr[0], query_map[0], reference_map[0], sim[0]
    return PairResult(corr, query_map, reference_map, sim, options.passes_per_pair(dim))
