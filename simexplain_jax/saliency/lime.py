"""LIME saliency for image pairs (SPEC.md section 2), fixed and variable reference.

The query is cut into superpixels (scikit-image SLIC on the correctly de-normalised image, once
per query, or the ``segments`` you pass). Sample i switches each superpixel on or off (off = 0,
the mean colour in normalised space; sample 0 is all on, as the lime package does); the samples
are made on device from the key and embedded in compiled chunks by the saliency engine. A
weighted ridge regression (exponential kernel of width 0.25 on the cosine distance of the on/off
vector to all-on; an intercept; ``ridge_alpha`` 1 as the lime package) maps the on/off state to
the similarity; each pixel gets its superpixel's coefficient.

The samples do not depend on the reference, so K references are solved at once: one weighted
Gram matrix, one Cholesky factorisation, K right-hand sides.

Variable reference (not in the paper; defined here): the reference is perturbed by K RISE masks,
as in ``rise_variable``; the map is the mean over the K masked references of the fixed-reference
LIME map. Because every masked reference shares the query samples and the factorisation, it costs
the N query samples plus K reference passes.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from simexplain_jax import masks as _masks
from simexplain_jax.imageops import IMAGENET_MEAN, IMAGENET_STD
from simexplain_jax.saliency import _common, engine
from simexplain_jax.similarity import SimilarityFn, cosine

_HIGHEST = jax.lax.Precision.HIGHEST


def superpixels(image_uint8: np.ndarray, num_segments: int = 50, compactness: float = 10.0) -> np.ndarray:
    """SLIC superpixels ``[H, W]`` int32 labels 0..S-1 of an RGB uint8 image (scikit-image)."""
    from skimage.segmentation import slic

    labels = slic(np.asarray(image_uint8), n_segments=num_segments, compactness=compactness, start_label=0)
    _, dense = np.unique(labels, return_inverse=True)  # consecutive labels
    return dense.reshape(labels.shape).astype(np.int32)


def denormalize(query: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Normalised ``[H, W, 3]`` -> uint8 RGB (x * std + mean, then x 255): the image as seen."""
    return np.clip(np.round((np.asarray(query) * std + mean) * 255.0), 0, 255).astype(np.uint8)


def _samples(key, num_samples, num_segments):
    """On/off states ``[N, S]`` float32; sample 0 is all on; sample i depends on (key, i) only."""

    def one(index):
        z = jax.random.bernoulli(jax.random.fold_in(key, index), 0.5, (num_segments,)).astype(jnp.float32)
        return jnp.where(index == 0, jnp.ones_like(z), z)

    return one


def _kernel_weights(z, kernel_width):
    """sqrt(exp(-d^2 / width^2)) with d the cosine distance of each row of z to all-on."""
    cos = jnp.sum(z, axis=1) / jnp.maximum(jnp.sqrt(jnp.sum(z, axis=1)) * jnp.sqrt(z.shape[1]), 1e-12)
    distance = 1.0 - cos
    return jnp.sqrt(jnp.exp(-(distance**2) / kernel_width**2))


def weighted_ridge(z, y, weights, alpha):
    """Coefficients ``[K, S]`` of ``y [N, K] ~ b + z [N, S] @ beta`` minimising
    ``sum_i w_i (y_i - b - z_i beta)^2 + alpha |beta|^2`` (intercept unpenalised, as sklearn's Ridge).
    One Cholesky factorisation serves all K columns."""
    w = weights / jnp.sum(weights)
    z_mean = w @ z
    y_mean = w @ y
    zc, yc = z - z_mean, y - y_mean
    gram = (zc * weights[:, None]).T @ zc + alpha * jnp.eye(z.shape[1])
    rhs = (zc * weights[:, None]).T @ yc
    factor = jax.scipy.linalg.cho_factor(gram)
    return jax.scipy.linalg.cho_solve(factor, rhs).T


def _lime_coefficients(embed_fn, query, refs, key, segments, num_segments, num_samples, kernel_width, ridge_alpha,
                       batch_size, similarity):
    dim = _common.embedding_dim(embed_fn, query.shape)
    _common.check_embedding_dims(dim, refs)
    sample = _samples(key, num_samples, num_segments)

    def masks_for(indices):
        return jnp.take(jax.vmap(sample)(indices), segments, axis=1)  # [B, H, W]: each pixel its superpixel's state

    result = engine.run(embed_fn, refs, engine.masked_perturbation(query, masks_for), num_samples, batch_size,
                        similarity, accumulate_maps=False, return_scores=True)
    z = jax.vmap(sample)(jnp.arange(num_samples, dtype=jnp.int32))
    with jax.default_matmul_precision("highest"):
        return weighted_ridge(z, result.scores, _kernel_weights(z, kernel_width), ridge_alpha)  # [K, S]


_STATIC = ("num_segments", "num_samples", "kernel_width", "ridge_alpha", "batch_size", "similarity")


@jax.jit(static_argnames=_STATIC)
def _lime_jit(embed_fn, query, refs, key, segments, **static):
    coefficients = _lime_coefficients(embed_fn, query, refs, key, segments, **static)
    return coefficients[:, segments]


@jax.jit(static_argnames=_STATIC + ("num_reference_masks", "grid_size", "p"))
def _lime_variable_jit(embed_fn, query, reference, key, segments, *, num_reference_masks, grid_size, p, **static):
    _common.embedding_dim(embed_fn, reference.shape, name="reference")
    ref_masks = _masks.rise_mask_fn(jax.random.fold_in(key, 1), grid_size, p, reference.shape)(
        jnp.arange(num_reference_masks, dtype=jnp.int32))
    refs = _common.embed_in_chunks(embed_fn, reference[None] * ref_masks[..., None], static["batch_size"])
    coefficients = _lime_coefficients(embed_fn, query, refs, jax.random.fold_in(key, 0), segments, **static)
    return jnp.mean(coefficients, axis=0)[segments]


def _prepare(embed_fn, query, key, segments, num_segments, num_samples, kernel_width, ridge_alpha, batch_size,
             similarity, segmentation_image):
    embed_fn = _common.as_pytree_fn(embed_fn)
    query = _common.check_image(query, "query")
    if key is None:
        raise ValueError("lime needs key= (the on/off samples are drawn from it)")
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2, got {num_samples!r}")
    if not kernel_width > 0 or not ridge_alpha >= 0:
        raise ValueError(f"kernel_width must be > 0 and ridge_alpha >= 0, got {kernel_width}, {ridge_alpha}")
    if segments is None:
        if segmentation_image is None:
            if query.shape[-1] != 3:
                raise ValueError("pass segments= or segmentation_image= for a query that is not RGB")
            segmentation_image = denormalize(np.asarray(query))
        segments = superpixels(segmentation_image, num_segments)
    segments = np.asarray(segments)
    if segments.shape != query.shape[:2] or not np.issubdtype(segments.dtype, np.integer) or segments.min() < 0:
        raise ValueError(f"segments must be non-negative integer labels [H, W] = {query.shape[:2]}, "
                         f"got {segments.shape} {segments.dtype}")
    static = dict(num_segments=int(segments.max()) + 1, num_samples=int(num_samples), kernel_width=float(kernel_width),
                  ridge_alpha=float(ridge_alpha), batch_size=_common.check_batch_size(batch_size),
                  similarity=similarity)
    _common.check_similarity(similarity)
    return embed_fn, query, jnp.asarray(segments, jnp.int32), static


def lime(embed_fn, query, reference_embeddings, *, key: jax.Array, segments: Optional[np.ndarray] = None,
         num_samples: int = 1000, num_segments: int = 50, kernel_width: float = 0.25, ridge_alpha: float = 1.0,
         batch_size: int = 256, similarity: SimilarityFn = cosine,
         segmentation_image: Optional[np.ndarray] = None) -> jax.Array:
    """LIME saliency ``[H, W]`` (``[D]`` reference) or ``[K, H, W]`` (``[K, D]``): see the module docstring.

    ``segments [H, W]`` overrides the SLIC superpixels; ``segmentation_image`` (uint8 RGB) is
    what SLIC sees (default: the query de-normalised with ImageNet mean/std).
    """
    refs, single = _common.check_reference_embeddings(reference_embeddings)
    embed_fn, query, segments, static = _prepare(embed_fn, query, key, segments, num_segments, num_samples,
                                                 kernel_width, ridge_alpha, batch_size, similarity,
                                                 segmentation_image)
    maps = _lime_jit(embed_fn, query, refs, key, segments, **static)
    return maps[0] if single else maps


def lime_variable(embed_fn, query, reference, *, key: jax.Array, num_reference_masks: int = 30, grid_size: int = 8,
                  p: float = 0.5, segments: Optional[np.ndarray] = None, num_samples: int = 1000,
                  num_segments: int = 50, kernel_width: float = 0.25, ridge_alpha: float = 1.0,
                  batch_size: int = 256, similarity: SimilarityFn = cosine,
                  segmentation_image: Optional[np.ndarray] = None) -> jax.Array:
    """LIME with a variable reference (mean over K RISE-masked references): ``[H, W]``."""
    reference = _common.check_image(reference, "reference")
    embed_fn, query, segments, static = _prepare(embed_fn, query, key, segments, num_segments, num_samples,
                                                 kernel_width, ridge_alpha, batch_size, similarity,
                                                 segmentation_image)
    if reference.shape[-1] != query.shape[-1]:
        raise ValueError(f"reference has {reference.shape[-1]} channels but query has {query.shape[-1]}")
    _masks.check_rise_options(num_reference_masks, grid_size, p)
    return _lime_variable_jit(embed_fn, query, reference, key, segments, num_reference_masks=int(num_reference_masks),
                              grid_size=int(grid_size), p=float(p), **static)
