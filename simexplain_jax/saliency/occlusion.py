"""Sliding-window occlusion saliency, fixed and variable reference (SPEC.md section 2).

``S[i, j] = 1 - s(q with window ij set to 0)`` on the window grid, upsampled bilinearly with
aligned corners to ``H x W``. The reference geometry (window 32, stride 4, padding 8) gives a
25 x 25 grid at 112 px. (The reference code's fixed-reference variant crashes: it views 627
scores as 25 x 25; here the grid is computed from the geometry.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from simexplain_jax import masks as _masks
from simexplain_jax.saliency import _common, engine
from simexplain_jax.similarity import SimilarityFn, cosine

_HIGHEST = jax.lax.Precision.HIGHEST


def _occlusion_scores(embed_fn, query, refs, window, stride, padding, batch_size, similarity):
    """Scores ``[K, grid_h, grid_w]`` of the occluded query against each reference embedding."""
    dim = _common.embedding_dim(embed_fn, query.shape)
    _common.check_embedding_dims(dim, refs)
    masks_for, (gh, gw) = _masks.occlusion_mask_fn(query.shape, window, stride, padding)
    result = engine.run(
        embed_fn, refs, engine.masked_perturbation(query, masks_for), gh * gw, batch_size, similarity,
        accumulate_maps=False, return_scores=True,
    )
    return result.scores.T.reshape(refs.shape[0], gh, gw)


def _upsample_grid(grid: jax.Array, height: int, width: int) -> jax.Array:
    """``[K, gh, gw]`` -> ``[K, H, W]``, bilinear with aligned corners."""
    rows = jnp.asarray(_common.align_corners_matrix(grid.shape[1], height))
    cols = jnp.asarray(_common.align_corners_matrix(grid.shape[2], width))
    return jnp.einsum("hi,kij,wj->khw", rows, grid, cols, precision=_HIGHEST)


@jax.jit(static_argnames=("window", "stride", "padding", "batch_size", "similarity"))
def _sliding_window_jit(embed_fn, query, refs, *, window, stride, padding, batch_size, similarity):
    scores = _occlusion_scores(embed_fn, query, refs, window, stride, padding, batch_size, similarity)
    return _upsample_grid(1.0 - scores, query.shape[0], query.shape[1])


def sliding_window(
    embed_fn,
    query,
    reference_embeddings,
    *,
    window: int = 32,
    stride: int = 4,
    padding: int = 8,
    batch_size: int = 256,
    similarity: SimilarityFn = cosine,
) -> jax.Array:
    """Occlusion saliency of ``query`` for fixed references: ``[H, W]`` or ``[K, H, W]``.

    Windows of ``window`` px at ``stride`` px are laid on the image padded by ``padding`` px per
    side (top-left corners from ``-padding``), clipped to the image and set to 0. Arguments as
    in ``sx.saliency.rise``.
    """
    embed_fn = _common.as_pytree_fn(embed_fn)
    query = _common.check_image(query, "query")
    refs, single = _common.check_reference_embeddings(reference_embeddings)
    _masks.check_window_options(window, stride, padding)
    _masks.sliding_window_grid(query.shape[0], window, stride, padding)
    _masks.sliding_window_grid(query.shape[1], window, stride, padding)
    batch_size = _common.check_batch_size(batch_size)
    _common.check_similarity(similarity)
    maps = _sliding_window_jit(embed_fn, query, refs, window=int(window), stride=int(stride), padding=int(padding),
                               batch_size=batch_size, similarity=similarity)
    return maps[0] if single else maps


@jax.jit(static_argnames=("window", "stride", "padding", "reference_window", "reference_stride",
                          "reference_padding", "batch_size", "similarity"))
def _sliding_window_variable_jit(embed_fn, query, reference, *, window, stride, padding, reference_window,
                                 reference_stride, reference_padding, batch_size, similarity):
    _common.embedding_dim(embed_fn, reference.shape, name="reference")
    ref_masks = _masks.occlusion_masks(reference.shape, reference_window, reference_stride, reference_padding)
    refs = _common.embed_in_chunks(embed_fn, reference[None] * ref_masks[..., None], batch_size)
    scores = _occlusion_scores(embed_fn, query, refs, window, stride, padding, batch_size, similarity)
    grid = 1.0 - jnp.mean(scores, axis=0, keepdims=True)
    return _upsample_grid(grid, query.shape[0], query.shape[1])[0]


def sliding_window_variable(
    embed_fn,
    query,
    reference,
    *,
    window: int = 32,
    stride: int = 4,
    padding: int = 8,
    reference_window: int = 32,
    reference_stride: int = 16,
    reference_padding: int = 0,
    batch_size: int = 256,
    similarity: SimilarityFn = cosine,
) -> jax.Array:
    """Occlusion saliency with a variable reference: ``[H, W]``.

    The reference is occluded by a grid of ``reference_window`` windows at ``reference_stride``
    (6 x 6 = 36 occlusions at 112 px, as the paper); the query map is the mean over those
    occluded references of the fixed-reference map. Costs (query windows + reference windows)
    forward passes.
    """
    embed_fn = _common.as_pytree_fn(embed_fn)
    query = _common.check_image(query, "query")
    reference = _common.check_image(reference, "reference")
    if reference.shape[-1] != query.shape[-1]:
        raise ValueError(f"reference has {reference.shape[-1]} channels but query has {query.shape[-1]}")
    _masks.check_window_options(window, stride, padding)
    for size in query.shape[:2]:
        _masks.sliding_window_grid(size, window, stride, padding)
    _masks.check_window_options(reference_window, reference_stride, reference_padding)
    for size in reference.shape[:2]:
        _masks.sliding_window_grid(size, reference_window, reference_stride, reference_padding)
    batch_size = _common.check_batch_size(batch_size)
    _common.check_similarity(similarity)
    return _sliding_window_variable_jit(
        embed_fn, query, reference, window=int(window), stride=int(stride), padding=int(padding),
        reference_window=int(reference_window), reference_stride=int(reference_stride),
        reference_padding=int(reference_padding), batch_size=batch_size, similarity=similarity,
    )
