"""Sliding-window occlusion saliency, fixed and variable reference (docs/method.md, "Sliding window").

``S[i, j] = 1 - s(q with window ij set to 0)`` on the window grid, upsampled bilinearly with
aligned corners to ``H x W``. The reference geometry (window 32, stride 4, padding 8) gives a
25 x 25 grid at 112 px. (The reference code's fixed-reference variant crashes: it views 627
scores as 25 x 25; here the grid is computed from the geometry.)

Variable reference: each reference is occluded by a grid of ``reference_window`` windows at
``reference_stride`` (6 x 6 = 36 occlusions at 112 px, as the paper) and its query map is the mean
over those occluded references of the fixed-reference map. The occluded-query embeddings are
shared by every reference: (query windows + K reference windows) forward passes for K references.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from simexplain_jax import checks, engine
from simexplain_jax import masks as _masks
from simexplain_jax.engine import EmbedFn
from simexplain_jax.similarity import SimilarityFn, cosine

_HIGHEST = jax.lax.Precision.HIGHEST
DEFAULTS = dict(window=32, stride=4, padding=8, batch_size=256, similarity=cosine, compute_dtype="float32")
VARIABLE_DEFAULTS = dict(DEFAULTS, reference_window=32, reference_stride=16, reference_padding=0)


def options(window=32, stride=4, padding=8, batch_size=256, similarity=cosine, compute_dtype="float32") -> dict:
    window, stride, padding = _masks.check_window_options(window, stride, padding)
    checks.check_similarity(similarity)
    return dict(window=window, stride=stride, padding=padding, batch_size=checks.check_batch_size(batch_size),
                similarity=similarity, compute_dtype=checks.check_compute_dtype(compute_dtype))


def variable_options(reference_window=32, reference_stride=16, reference_padding=0, **fixed) -> dict:
    window, stride, padding = _masks.check_window_options(reference_window, reference_stride, reference_padding)
    return dict(options(**fixed), reference_window=window, reference_stride=stride, reference_padding=padding)


def _check_geometry(shape, window, stride, padding):
    for size in shape[:2]:
        _masks.sliding_window_grid(size, window, stride, padding)  # raises if the window does not fit


def _occlusion_scores(embed_fn, query, refs, window, stride, padding, batch_size, similarity):
    """Scores ``[K, grid_h, grid_w]`` of the occluded query against each reference embedding."""
    checks.check_embedding_dims(checks.embedding_dim(embed_fn, query.shape), refs)
    masks_for, (gh, gw) = _masks.occlusion_mask_fn(query.shape, window=window, stride=stride, padding=padding)
    result = engine.run(embed_fn, refs, engine.masked_perturbation(query, masks_for), gh * gw, batch_size, similarity,
                        accumulate_maps=False, return_scores=True)
    return result.scores.T.reshape(refs.shape[0], gh, gw)


def _upsample_grid(grid, height, width):
    """``[K, gh, gw]`` -> ``[K, H, W]``, bilinear with aligned corners."""
    rows = jnp.asarray(_masks.align_corners_matrix(grid.shape[1], height))
    cols = jnp.asarray(_masks.align_corners_matrix(grid.shape[2], width))
    return jnp.einsum("hi,kij,wj->khw", rows, grid, cols, precision=_HIGHEST)


def sliding_window_core(embed_fn, query, references, key=None, *, window, stride, padding, batch_size, similarity,
                        compute_dtype="float32"):
    """``[K, H, W]`` maps for ``references [K, D]`` (deterministic: ``key`` is unused)."""
    embed_fn = engine.in_compute_dtype(embed_fn, compute_dtype)
    scores = _occlusion_scores(embed_fn, query, references, window, stride, padding, batch_size, similarity)
    return _upsample_grid(1.0 - scores, query.shape[0], query.shape[1])


def sliding_window_variable_core(embed_fn, query, references, key=None, *, window, stride, padding, reference_window,
                                 reference_stride, reference_padding, batch_size, similarity,
                                 compute_dtype="float32"):
    """``[K, H, W]`` variable-reference maps for ``references [K, H, W, C]`` (``key`` is unused)."""
    embed_fn = engine.in_compute_dtype(embed_fn, compute_dtype)
    checks.embedding_dim(embed_fn, references.shape[1:], name="reference")
    ref_masks = _masks.occlusion_masks(references.shape[1:], window=reference_window, stride=reference_stride,
                                       padding=reference_padding)
    count, per_reference = references.shape[0], ref_masks.shape[0]
    occluded = (references[:, None] * ref_masks[None, ..., None]).reshape(-1, *references.shape[1:])
    embeddings = engine.embed_in_chunks(embed_fn, occluded, batch_size)
    scores = _occlusion_scores(embed_fn, query, embeddings, window, stride, padding, batch_size, similarity)
    grid = 1.0 - scores.reshape(count, per_reference, *scores.shape[1:]).mean(axis=1)
    return _upsample_grid(grid, query.shape[0], query.shape[1])


_sliding_window_jit = jax.jit(sliding_window_core, static_argnames=tuple(DEFAULTS))
_sliding_window_variable_jit = jax.jit(sliding_window_variable_core, static_argnames=tuple(VARIABLE_DEFAULTS))


def sliding_window(embed_fn: EmbedFn, query: ArrayLike, reference_embeddings: ArrayLike, *,
                   key: Optional[jax.Array] = None, window: int = 32,
                   stride: int = 4, padding: int = 8, batch_size: int = 256,
                   similarity: SimilarityFn = cosine, compute_dtype: str = "float32") -> jax.Array:
    """Occlusion saliency of ``query`` for fixed references: ``[D]`` gives ``[H, W]``, ``[K, D]``
    gives ``[K, H, W]``.

    Windows of ``window`` px at ``stride`` px are laid on the image padded by ``padding`` px per
    side (top-left corners from ``-padding``), clipped to the image and set to 0. The method is
    deterministic: ``key`` is accepted, like every method's, and unused. Other arguments (``batch_size``,
    ``similarity``, ``compute_dtype``) as in ``sx.saliency.rise``.
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_reference_embeddings(reference_embeddings)
    static = options(window, stride, padding, batch_size, similarity, compute_dtype)
    _check_geometry(query.shape, window, stride, padding)
    maps = _sliding_window_jit(embed_fn, query, refs, **static)
    return maps[0] if single else maps


def sliding_window_variable(embed_fn: EmbedFn, query: ArrayLike, reference: ArrayLike, *,
                            key: Optional[jax.Array] = None, window: int = 32,
                            stride: int = 4, padding: int = 8, reference_window: int = 32,
                            reference_stride: int = 16, reference_padding: int = 0, batch_size: int = 256,
                            similarity: SimilarityFn = cosine, compute_dtype: str = "float32") -> jax.Array:
    """Occlusion saliency with a variable reference: ``reference [H, W, C]`` gives ``[H, W]``,
    ``[K, H, W, C]`` gives ``[K, H, W]`` (see the module docstring; ``key`` is unused)."""
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_image_or_batch(reference, "reference")
    if refs.shape[-1] != query.shape[-1]:
        raise ValueError(f"reference has {refs.shape[-1]} channels but query has {query.shape[-1]}")
    static = variable_options(reference_window, reference_stride, reference_padding, window=window, stride=stride,
                              padding=padding, batch_size=batch_size, similarity=similarity,
                              compute_dtype=compute_dtype)
    _check_geometry(query.shape, window, stride, padding)
    _check_geometry(refs.shape[1:], reference_window, reference_stride, reference_padding)
    maps = _sliding_window_variable_jit(embed_fn, query, refs, **static)
    return maps[0] if single else maps
