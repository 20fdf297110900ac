"""Sliding-window occlusion saliency, fixed and variable reference (docs/method.md, "Sliding window").

``S[i, j] = 1 - s(q with window ij set to 0)`` on the window grid, upsampled bilinearly with
aligned corners to ``H x W``. The reference geometry (window 32, stride 4, padding 8) gives a
25 x 25 grid at 112 px; the grid is computed from the geometry.

Variable reference: each reference is occluded by a grid of ``reference_window`` windows at
``reference_stride`` (6 x 6 = 36 occlusions at 112 px, as the paper) and its query map is the mean
over those occluded references of the fixed-reference map. The occluded-query embeddings are
shared by every reference: (query windows + K reference windows) forward passes for K references.

The options are one :class:`SlidingWindow` (or :class:`SlidingWindowVariable`); ``sliding_window_core``
and ``sliding_window_variable_core`` are the pure cores every path runs.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from simexplain_jax import checks, engine
from simexplain_jax import masks as _masks
from simexplain_jax.engine import EmbedFn
from simexplain_jax.saliency._options import (MethodOptions, SaliencyResult, options_class, resolve, result, set_field,
                                              squeeze)
from simexplain_jax.similarity import SimilarityFn, cosine

_HIGHEST = jax.lax.Precision.HIGHEST


@options_class("sliding_window", references="embeddings")
class SlidingWindow(MethodOptions):
    """Options of sliding-window occlusion with fixed references (:func:`sliding_window`).

    Attributes:
      window: the side of the square window, in pixels.
      stride: the step between windows, in pixels.
      padding: pixels added on each side before laying the windows (corners from ``-padding``).
      batch_size: occluded queries per compiled chunk.
      similarity: broadcasting ``[..., D] x [..., D] -> [...]``.
      compute_dtype: the dtype of the embedding forward pass, as in :class:`Rise`.
    """

    window: int = 32
    stride: int = 4
    padding: int = 8
    batch_size: int = 256
    similarity: SimilarityFn = cosine
    compute_dtype: str = "float32"

    def __post_init__(self):
        window, stride, padding = _masks.check_window_options(self.window, self.stride, self.padding)
        checks.check_similarity(self.similarity)
        for name, value in dict(window=window, stride=stride, padding=padding,
                                batch_size=checks.check_batch_size(self.batch_size),
                                compute_dtype=checks.check_compute_dtype(self.compute_dtype)).items():
            set_field(self, name, value)

    def core(self, embed_fn, query, references, key=None) -> SaliencyResult:
        return sliding_window_core(embed_fn, query, references, key, self)


@options_class("sliding_window_variable", references="images")
class SlidingWindowVariable(SlidingWindow):
    """Options of sliding-window occlusion with a variable reference (:func:`sliding_window_variable`):
    those of :class:`SlidingWindow` and

    Attributes:
      reference_window, reference_stride, reference_padding: the geometry of the windows that
        occlude the reference.
    """

    reference_window: int = 32
    reference_stride: int = 16
    reference_padding: int = 0

    def __post_init__(self):
        super().__post_init__()
        window, stride, padding = _masks.check_window_options(self.reference_window, self.reference_stride,
                                                              self.reference_padding)
        for name, value in dict(reference_window=window, reference_stride=stride, reference_padding=padding).items():
            set_field(self, name, value)

    def core(self, embed_fn, query, references, key=None) -> SaliencyResult:
        return sliding_window_variable_core(embed_fn, query, references, key, self)


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


def sliding_window_core(embed_fn, query, references, key, options: SlidingWindow) -> SaliencyResult:
    """``[K, H, W]`` maps for ``references [K, D]`` (deterministic: ``key`` is unused); traceable."""
    o = options
    embed_fn = engine.in_compute_dtype(embed_fn, o.compute_dtype)
    scores = _occlusion_scores(embed_fn, query, references, o.window, o.stride, o.padding, o.batch_size, o.similarity)
    return result(_upsample_grid(1.0 - scores, query.shape[0], query.shape[1]), scores.shape[1] * scores.shape[2])


def sliding_window_variable_core(embed_fn, query, references, key, options: SlidingWindowVariable) -> SaliencyResult:
    """``[K, H, W]`` variable-reference maps for ``references [K, H, W, C]`` (``key`` is unused); traceable."""
    o = options
    embed_fn = engine.in_compute_dtype(embed_fn, o.compute_dtype)
    checks.embedding_dim(embed_fn, references.shape[1:], name="reference")
    ref_masks = _masks.occlusion_masks(references.shape[1:], window=o.reference_window, stride=o.reference_stride,
                                       padding=o.reference_padding)
    count, per_reference = references.shape[0], ref_masks.shape[0]
    occluded = (references[:, None] * ref_masks[None, ..., None]).reshape(-1, *references.shape[1:])
    embeddings = engine.embed_in_chunks(embed_fn, occluded, o.batch_size)
    scores = _occlusion_scores(embed_fn, query, embeddings, o.window, o.stride, o.padding, o.batch_size, o.similarity)
    grid = 1.0 - scores.reshape(count, per_reference, *scores.shape[1:]).mean(axis=1)
    return result(_upsample_grid(grid, query.shape[0], query.shape[1]), scores.shape[1] * scores.shape[2])


_sliding_window_jit = jax.jit(sliding_window_core)
_sliding_window_variable_jit = jax.jit(sliding_window_variable_core)


def sliding_window(embed_fn: EmbedFn, query: ArrayLike, reference_embeddings: ArrayLike, *,
                   key: Optional[jax.Array] = None, options: Optional[SlidingWindow] = None,
                   **overrides) -> SaliencyResult:
    """Occlusion saliency of ``query`` for fixed references.

    Windows of ``window`` px at ``stride`` px are laid on the image padded by ``padding`` px per
    side, clipped to the image and set to 0, one at a time.

    Args:
      embed_fn, query: as in ``sx.saliency.rise``.
      reference_embeddings: ``[D]`` (gives ``[H, W]`` maps) or ``[K, D]`` (gives ``[K, H, W]``).
      key: accepted, like every method's, and unused (the method is deterministic).
      options: a :class:`SlidingWindow` (default ``SlidingWindow()``).
      **overrides: options replacing those of ``options``, e.g. ``window=16``.

    Returns:
      ``SaliencyResult(maps, passes, error)``: ``passes`` the occluded queries embedded, ``error`` NaN.
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_reference_embeddings(reference_embeddings)
    options = resolve(SlidingWindow, options, overrides)
    _check_geometry(query.shape, options.window, options.stride, options.padding)
    return squeeze(_sliding_window_jit(embed_fn, query, refs, None, options), single)


def sliding_window_variable(embed_fn: EmbedFn, query: ArrayLike, reference: ArrayLike, *,
                            key: Optional[jax.Array] = None, options: Optional[SlidingWindowVariable] = None,
                            **overrides) -> SaliencyResult:
    """Occlusion saliency with a variable reference (see the module docstring).

    Args:
      embed_fn, query: as in ``sx.saliency.rise``.
      reference: an image ``[H, W, C]`` (gives ``[H, W]``) or images ``[K, H, W, C]`` (gives ``[K, H, W]``).
      key: accepted and unused.
      options: a :class:`SlidingWindowVariable` (default ``SlidingWindowVariable()``).
      **overrides: options replacing those of ``options``.

    Returns:
      ``SaliencyResult(maps, passes, error)``: ``passes`` the occluded queries embedded, ``error`` NaN.
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_image_or_batch(reference, "reference")
    if refs.shape[-1] != query.shape[-1]:
        raise ValueError(f"reference has {refs.shape[-1]} channels but query has {query.shape[-1]}")
    options = resolve(SlidingWindowVariable, options, overrides)
    _check_geometry(query.shape, options.window, options.stride, options.padding)
    _check_geometry(refs.shape[1:], options.reference_window, options.reference_stride, options.reference_padding)
    return squeeze(_sliding_window_variable_jit(embed_fn, query, refs, None, options), single)
