"""LIME saliency for image pairs, fixed and variable reference (docs/method.md, "LIME").

The query is cut into superpixels (scikit-image SLIC on the correctly de-normalised image, once
per query, or the ``segments`` you pass). Sample i switches each superpixel on or off (off = 0,
the mean colour in normalised space; sample 0 is all on, as the lime package does); the samples
are made on device from the key (or given as ``samples [N, S]``) and embedded in compiled chunks
by the saliency engine. A weighted ridge regression (exponential kernel of width 0.25 on the cosine distance of the on/off
vector to all-on; an intercept; ``ridge_alpha`` 1 as the lime package) maps the on/off state to
the similarity; each pixel gets its superpixel's coefficient.

The samples do not depend on the reference, so K references are solved at once: one weighted
Gram matrix, one Cholesky factorisation, K right-hand sides.

Variable reference (not in the paper; defined here): each reference is perturbed by J RISE masks,
as in ``rise_variable``; its map is the mean over the J masked references of the fixed-reference
LIME map. Every masked reference shares the query samples and the factorisation, so K references
cost the N query samples plus K J reference passes.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from skimage.segmentation import slic

from simexplain_jax import checks, engine
from simexplain_jax import masks as _masks
from simexplain_jax.engine import EmbedFn
from simexplain_jax.imageops import IMAGENET_MEAN, IMAGENET_STD
from simexplain_jax.similarity import SimilarityFn, cosine

DEFAULTS = dict(num_samples=1000, num_segments=50, kernel_width=0.25, ridge_alpha=1.0, batch_size=256,
                similarity=cosine, compute_dtype="float32")
VARIABLE_DEFAULTS = dict(DEFAULTS, num_reference_masks=30, grid_size=8, p=0.5)


def superpixels(image_uint8: np.ndarray, num_segments: int = 50, compactness: float = 10.0) -> np.ndarray:
    """SLIC superpixels ``[H, W]`` int32 labels 0..S-1 of an RGB uint8 image (scikit-image)."""
    labels = slic(np.asarray(image_uint8), n_segments=num_segments, compactness=compactness, start_label=0)
    _, dense = np.unique(labels, return_inverse=True)  # consecutive labels
    return dense.reshape(labels.shape).astype(np.int32)


def denormalize(query: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Normalised ``[H, W, 3]`` -> uint8 RGB (x * std + mean, then x 255): the image as seen."""
    return np.clip(np.round((np.asarray(query) * std + mean) * 255.0), 0, 255).astype(np.uint8)


def options(num_samples=1000, num_segments=50, kernel_width=0.25, ridge_alpha=1.0, batch_size=256,
            similarity=cosine, compute_dtype="float32") -> dict:
    """The fixed-reference options, checked (``num_segments`` is SLIC's target, not a static option)."""
    num_samples = checks.check_positive_int(num_samples, "num_samples", 2)
    checks.check_positive_int(num_segments, "num_segments")
    if not float(kernel_width) > 0 or not float(ridge_alpha) >= 0:
        raise ValueError(f"kernel_width must be > 0 and ridge_alpha >= 0, got {kernel_width}, {ridge_alpha}")
    checks.check_similarity(similarity)
    return dict(num_samples=num_samples, kernel_width=float(kernel_width), ridge_alpha=float(ridge_alpha),
                batch_size=checks.check_batch_size(batch_size), similarity=similarity,
                compute_dtype=checks.check_compute_dtype(compute_dtype))


def variable_options(num_reference_masks=30, grid_size=8, p=0.5, **fixed) -> dict:
    num_reference_masks, grid_size, p = _masks.check_rise_options(num_reference_masks, grid_size, p)
    return dict(options(**fixed), num_reference_masks=num_reference_masks, grid_size=grid_size, p=p)


def query_segments(query: np.ndarray, num_segments: int = 50, segmentation_image=None) -> np.ndarray:
    """SLIC superpixels of a normalised RGB ``query`` (de-normalised first) or of the uint8
    ``segmentation_image`` when given: ``[H, W]`` int32 labels 0..S-1."""
    if segmentation_image is None:
        if np.shape(query)[-1] != 3:
            raise ValueError("pass segments= or segmentation_image= for a query that is not RGB")
        segmentation_image = denormalize(np.asarray(query))
    return superpixels(segmentation_image, num_segments)


def _samples(key, num_segments):
    """``index -> on/off state [S]``; sample 0 is all on; sample i depends on (key, i) only."""

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


def _coefficients(embed_fn, query, refs, key, segments, samples, num_segments, num_samples, kernel_width, ridge_alpha,
                  batch_size, similarity, compute_dtype):
    """``[K, S]`` superpixel coefficients for ``refs [K, D]`` (the regression in float32 whatever ``compute_dtype``)."""
    embed_fn = engine.in_compute_dtype(embed_fn, compute_dtype)
    checks.check_embedding_dims(checks.embedding_dim(embed_fn, query.shape), refs)
    if samples is not None:
        num_samples = samples.shape[0]

        def sample_rows(indices):
            return jnp.take(samples, jnp.minimum(indices, num_samples - 1), axis=0)
    else:
        sample_rows = jax.vmap(_samples(key, num_segments))

    def masks_for(indices):
        return jnp.take(sample_rows(indices), segments, axis=1)  # [B, H, W]: each pixel its superpixel's state

    result = engine.run(embed_fn, refs, engine.masked_perturbation(query, masks_for), num_samples, batch_size,
                        similarity, accumulate_maps=False, return_scores=True)
    z = sample_rows(jnp.arange(num_samples, dtype=jnp.int32))
    with jax.default_matmul_precision("highest"):
        return weighted_ridge(z, result.scores, _kernel_weights(z, kernel_width), ridge_alpha)


def lime_core(embed_fn, query, references, key, segments, *, samples=None, num_segments, num_samples, kernel_width,
              ridge_alpha, batch_size, similarity, compute_dtype="float32"):
    """``[K, H, W]`` maps for ``references [K, D]``; ``segments [H, W]`` labels 0..num_segments-1."""
    coefficients = _coefficients(embed_fn, query, references, key, segments, samples, num_segments, num_samples,
                                 kernel_width, ridge_alpha, batch_size, similarity, compute_dtype)
    return coefficients[:, segments]


def lime_variable_core(embed_fn, query, references, key, segments, *, num_reference_masks, grid_size, p,
                       num_segments, num_samples, kernel_width, ridge_alpha, batch_size, similarity,
                       compute_dtype="float32"):
    """``[K, H, W]`` for ``references [K, H, W, C]``: the mean over J RISE-masked copies of each
    reference (masks from ``fold_in(key, 1)``, samples from ``fold_in(key, 0)``)."""
    embed_fn = engine.in_compute_dtype(embed_fn, compute_dtype)
    checks.embedding_dim(embed_fn, references.shape[1:], name="reference")
    ref_masks = _masks.rise_mask_fn(references.shape[1:], key=jax.random.fold_in(key, 1), grid_size=grid_size,
                                    p=p)(jnp.arange(num_reference_masks))
    count = references.shape[0]
    masked = (references[:, None] * ref_masks[None, ..., None]).reshape(-1, *references.shape[1:])
    embeddings = engine.embed_in_chunks(embed_fn, masked, batch_size)
    coefficients = _coefficients(embed_fn, query, embeddings, jax.random.fold_in(key, 0), segments, None, num_segments,
                                 num_samples, kernel_width, ridge_alpha, batch_size, similarity, compute_dtype)
    return coefficients.reshape(count, num_reference_masks, -1).mean(axis=1)[:, segments]


_STATIC = ("num_segments", "num_samples", "kernel_width", "ridge_alpha", "batch_size", "similarity", "compute_dtype")
_lime_jit = jax.jit(lime_core, static_argnames=_STATIC)
_lime_variable_jit = jax.jit(lime_variable_core, static_argnames=_STATIC + ("num_reference_masks", "grid_size", "p"))


def _check_segments(segments, query, num_segments, segmentation_image):
    if segments is None:
        segments = query_segments(np.asarray(query), num_segments, segmentation_image)
    segments = np.asarray(segments)
    if segments.shape != query.shape[:2] or not np.issubdtype(segments.dtype, np.integer) or segments.min() < 0:
        raise ValueError(f"segments must be non-negative integer labels [H, W] = {query.shape[:2]}, "
                         f"got {segments.shape} {segments.dtype}")
    _, dense = np.unique(segments, return_inverse=True)  # labels made consecutive: S = the number present
    return jnp.asarray(dense.reshape(segments.shape), jnp.int32), int(dense.max()) + 1


def lime(embed_fn: EmbedFn, query: ArrayLike, reference_embeddings: ArrayLike, *, key: Optional[jax.Array] = None,
         samples: Optional[jax.Array] = None, segments: Optional[np.ndarray] = None, num_samples: int = 1000,
         num_segments: int = 50, kernel_width: float = 0.25, ridge_alpha: float = 1.0, batch_size: int = 256,
         similarity: SimilarityFn = cosine, segmentation_image: Optional[np.ndarray] = None,
         compute_dtype: str = "float32") -> jax.Array:
    """LIME saliency: ``[D]`` reference gives ``[H, W]``, ``[K, D]`` gives ``[K, H, W]`` (see the
    module docstring).

    Exactly one of ``key`` (samples drawn on device; ``num_samples`` of them) and ``samples``
    (explicit on/off states ``[N, S]``, one column per superpixel of ``segments``). ``segments
    [H, W]`` overrides the SLIC superpixels (labels are made consecutive; S is the number of labels
    present); ``segmentation_image`` (uint8 RGB) is what SLIC sees (default: the query
    de-normalised with ImageNet mean/std). ``compute_dtype``: the embedding forward's dtype, as in
    ``sx.saliency.rise`` (the ridge regression stays float32).
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_reference_embeddings(reference_embeddings)
    checks.check_key_or_masks(key, samples, what="samples")
    static = options(num_samples if samples is None else 2, num_segments, kernel_width, ridge_alpha, batch_size,
                     similarity, compute_dtype)
    segments, count = _check_segments(segments, query, num_segments, segmentation_image)
    if samples is not None:
        samples = jnp.asarray(samples, jnp.float32)
        if samples.ndim != 2 or samples.shape[1] != count or samples.shape[0] < 2:
            raise ValueError(f"samples must be on/off states [N, S] with N >= 2 and S = {count} superpixels, got "
                             f"shape {tuple(samples.shape)}")
        static["num_samples"] = samples.shape[0]
    maps = _lime_jit(embed_fn, query, refs, key, segments, samples=samples, num_segments=count, **static)
    return maps[0] if single else maps


def lime_variable(embed_fn: EmbedFn, query: ArrayLike, reference: ArrayLike, *, key: jax.Array,
                  num_reference_masks: int = 30, grid_size: int = 8,
                  p: float = 0.5, segments: Optional[np.ndarray] = None, num_samples: int = 1000,
                  num_segments: int = 50, kernel_width: float = 0.25, ridge_alpha: float = 1.0,
                  batch_size: int = 256, similarity: SimilarityFn = cosine,
                  segmentation_image: Optional[np.ndarray] = None, compute_dtype: str = "float32") -> jax.Array:
    """LIME with a variable reference (mean over J RISE-masked copies of each reference):
    ``reference [H, W, C]`` gives ``[H, W]``, ``[K, H, W, C]`` gives ``[K, H, W]``."""
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_image_or_batch(reference, "reference")
    if key is None:
        raise ValueError("lime_variable needs key= (samples and reference masks are drawn from it)")
    if refs.shape[-1] != query.shape[-1]:
        raise ValueError(f"reference has {refs.shape[-1]} channels but query has {query.shape[-1]}")
    static = variable_options(num_reference_masks, grid_size, p, num_samples=num_samples, num_segments=num_segments,
                              kernel_width=kernel_width, ridge_alpha=ridge_alpha, batch_size=batch_size,
                              similarity=similarity, compute_dtype=compute_dtype)
    segments, count = _check_segments(segments, query, num_segments, segmentation_image)
    maps = _lime_variable_jit(embed_fn, query, refs, key, segments, num_segments=count, **static)
    return maps[0] if single else maps
