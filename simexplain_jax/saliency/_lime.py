"""LIME saliency for image pairs, fixed and variable reference (docs/method.md, "LIME").

The query is cut into superpixels (scikit-image SLIC on the correctly de-normalised image, once
per query, or the ``segments`` you pass). Sample i switches each superpixel on or off (off = 0,
the mean colour in normalised space; sample 0 is all on, as the lime package does); the samples
are made on device from the key (or given as ``samples [N, S]``) and embedded in compiled chunks
by the saliency engine. A weighted ridge regression (exponential kernel of width 0.25 on the
cosine distance of the on/off vector to all-on; an intercept; ``ridge_alpha`` 1 as the lime
package) maps the on/off state to the similarity; each pixel gets its superpixel's coefficient.

The samples do not depend on the reference, so K references are solved at once: one weighted
Gram matrix, one Cholesky factorisation, K right-hand sides.

One compiled program serves every superpixel count S up to its capacity (the smallest power of two
at least ``num_segments`` and S, :func:`segment_capacity`): the samples have a column per slot of
the capacity, the slots past S are off in every sample and left out of the kernel's distance, and
their coefficients are zero. S itself is read from the labels inside the program.

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

from simexplain_jax import checks, engine
from simexplain_jax import masks as _masks
from simexplain_jax.engine import EmbedFn
from simexplain_jax.imageops import IMAGENET_MEAN, IMAGENET_STD
from simexplain_jax.saliency._options import (MethodOptions, SaliencyResult, options_class, resolve, result, set_field,
                                              squeeze)
from simexplain_jax.similarity import SimilarityFn, cosine



@options_class("lime", references="embeddings", traced=("kernel_width", "ridge_alpha"), segments=True)
class Lime(MethodOptions):
    """Options of LIME with fixed references (:func:`lime`).

    Attributes:
      num_samples: N, the on/off samples of the superpixels (at least 2; sample 0 is all on).
      num_segments: SLIC's target number of superpixels.
      kernel_width: the width of the exponential kernel on the cosine distance to all-on (traced).
      ridge_alpha: the ridge penalty of the weighted regression (traced).
      batch_size: samples per compiled chunk.
      similarity: broadcasting ``[..., D] x [..., D] -> [...]``.
      compute_dtype: the dtype of the embedding forward pass, as in :class:`Rise` (the
        regression stays float32).
    """

    num_samples: int = 1000
    num_segments: int = 50
    kernel_width: float = 0.25
    ridge_alpha: float = 1.0
    batch_size: int = 256
    similarity: SimilarityFn = cosine
    compute_dtype: str = "float32"

    def __post_init__(self):
        num_samples = checks.check_positive_int(self.num_samples, "num_samples", 2)
        num_segments = checks.check_positive_int(self.num_segments, "num_segments")
        if not float(self.kernel_width) > 0 or not float(self.ridge_alpha) >= 0:
            raise ValueError(f"kernel_width must be > 0 and ridge_alpha >= 0, got {self.kernel_width}, "
                             f"{self.ridge_alpha}")
        checks.check_similarity(self.similarity)
        for name, value in dict(num_samples=num_samples, num_segments=num_segments,
                                kernel_width=float(self.kernel_width), ridge_alpha=float(self.ridge_alpha),
                                batch_size=checks.check_batch_size(self.batch_size),
                                compute_dtype=checks.check_compute_dtype(self.compute_dtype)).items():
            set_field(self, name, value)

    def core(self, embed_fn, query, references, key, segments, *, capacity) -> SaliencyResult:
        return lime_core(embed_fn, query, references, key, self, segments, capacity=capacity)


@options_class("lime_variable", references="images", traced=("kernel_width", "ridge_alpha", "p"), segments=True)
class LimeVariable(Lime):
    """Options of LIME with a variable reference (:func:`lime_variable`): those of :class:`Lime` and

    Attributes:
      num_reference_masks: J, the RISE masks each reference is perturbed by.
      grid_size, p: the RISE mask distribution of the reference masks (``p`` traced).
    """

    num_reference_masks: int = 30
    grid_size: int = 8
    p: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        num_reference_masks, grid_size, p = _masks.check_rise_options(self.num_reference_masks, self.grid_size, self.p)
        for name, value in dict(num_reference_masks=num_reference_masks, grid_size=grid_size, p=p).items():
            set_field(self, name, value)

    def core(self, embed_fn, query, references, key, segments, *, capacity) -> SaliencyResult:
        return lime_variable_core(embed_fn, query, references, key, self, segments, capacity=capacity)


def superpixels(image_uint8: np.ndarray, num_segments: int = 50, compactness: float = 10.0) -> np.ndarray:
    """SLIC superpixels ``[H, W]`` int32 labels 0..S-1 of an RGB uint8 image (scikit-image)."""
    from skimage.segmentation import slic  # on first use: scikit-image loads much of SciPy, which only LIME needs

    labels = slic(np.asarray(image_uint8), n_segments=num_segments, compactness=compactness, start_label=0)
    _, dense = np.unique(labels, return_inverse=True)  # consecutive labels
    return dense.reshape(labels.shape).astype(np.int32)


def denormalize(query: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Normalised ``[H, W, 3]`` -> uint8 RGB (x * std + mean, then x 255): the image as seen."""
    return np.clip(np.round((np.asarray(query) * std + mean) * 255.0), 0, 255).astype(np.uint8)


def query_segments(query: np.ndarray, num_segments: int = 50, segmentation_image=None) -> np.ndarray:
    """SLIC superpixels of a normalised RGB ``query`` (de-normalised first) or of the uint8
    ``segmentation_image`` when given: ``[H, W]`` int32 labels 0..S-1."""
    if segmentation_image is None:
        if np.shape(query)[-1] != 3:
            raise ValueError("pass segments= or segmentation_image= for a query that is not RGB")
        segmentation_image = denormalize(np.asarray(query))
    return superpixels(segmentation_image, num_segments)


def segment_capacity(count: int, num_segments: int) -> int:
    """The superpixel slots of the program that explains a query with ``count`` superpixels: the
    smallest power of two at least ``count`` and ``num_segments`` (SLIC's target), so that the
    counts SLIC gives around its target share one program."""
    return 1 << (max(int(count), int(num_segments)) - 1).bit_length()


def _samples(key, valid):
    """``index -> on/off state [C]`` over the ``C`` slots, on only where ``valid [C]``; sample 0 is
    all on; sample i depends on (key, i) only. Slot j's state does not depend on C (with JAX's
    default partitionable Threefry the random bits of element j of a draw depend on j alone), so
    the states of the first S slots are those of a draw of S."""

    def one(index):
        z = jax.random.bernoulli(jax.random.fold_in(key, index), 0.5, valid.shape)
        return jnp.where(index == 0, valid, z & valid).astype(jnp.float32)

    return one


def _kernel_weights(z, kernel_width, count):
    """sqrt(exp(-d^2 / width^2)) with d the cosine distance of each row of z to all-on over the
    ``count`` superpixels (the other slots of z are 0)."""
    cos = jnp.sum(z, axis=1) / jnp.maximum(jnp.sqrt(jnp.sum(z, axis=1)) * jnp.sqrt(count.astype(jnp.float32)), 1e-12)
    distance = 1.0 - cos
    return jnp.sqrt(jnp.exp(-(distance**2) / kernel_width**2))


def weighted_ridge(z, y, weights, alpha, valid=None):
    """Coefficients ``[K, S]`` of ``y [N, K] ~ b + z [N, S] @ beta`` minimising
    ``sum_i w_i (y_i - b - z_i beta)^2 + alpha |beta|^2`` (intercept unpenalised, as sklearn's Ridge).
    One Cholesky factorisation serves all K columns. Columns where ``valid [S]`` is False must be
    zero: they get a unit diagonal (so the system stays positive definite at ``alpha = 0``) and a
    zero coefficient."""
    w = weights / jnp.sum(weights)
    z_mean = w @ z
    y_mean = w @ y
    zc, yc = z - z_mean, y - y_mean
    gram = (zc * weights[:, None]).T @ zc + alpha * jnp.eye(z.shape[1])
    if valid is not None:
        gram = gram + jnp.diag(jnp.where(valid, 0.0, 1.0))
    rhs = (zc * weights[:, None]).T @ yc
    factor = jax.scipy.linalg.cho_factor(gram)
    return jax.scipy.linalg.cho_solve(factor, rhs).T


def _coefficients(embed_fn, query, refs, key, segments, samples, capacity, num_samples, kernel_width, ridge_alpha,
                  batch_size, similarity, compute_dtype):
    """``[K, C]`` coefficients of the ``C = capacity`` superpixel slots for ``refs [K, D]``, zero past
    the superpixels of ``segments`` (labels 0..S-1); the regression in float32 whatever ``compute_dtype``."""
    embed_fn = engine.in_compute_dtype(embed_fn, compute_dtype)
    count = jnp.max(segments) + 1
    valid = jnp.arange(capacity) < count
    checks.check_embedding_dims(checks.embedding_dim(embed_fn, query.shape), refs)
    if samples is not None:
        num_samples = samples.shape[0]

        def sample_rows(indices):
            return jnp.take(samples, jnp.minimum(indices, num_samples - 1), axis=0)
    else:
        sample_rows = jax.vmap(_samples(key, valid))

    def masks_for(indices):
        return jnp.take(sample_rows(indices), segments, axis=1)  # [B, H, W]: each pixel its superpixel's state

    result = engine.run(embed_fn, refs, engine.masked_perturbation(query, masks_for), num_samples, batch_size,
                        similarity, accumulate_maps=False, return_scores=True)
    z = sample_rows(jnp.arange(num_samples, dtype=jnp.int32))
    with jax.default_matmul_precision("highest"):
        return weighted_ridge(z, result.scores, _kernel_weights(z, kernel_width, count), ridge_alpha, valid)


def lime_core(embed_fn, query, references, key, options: Lime, segments, *, capacity,
              samples=None) -> SaliencyResult:
    """``[K, H, W]`` maps for ``references [K, D]``; ``segments [H, W]`` labels 0..S-1 with S at
    most ``capacity`` (``samples``, if given, ``[N, capacity]`` and 0 past S); traceable."""
    o = options
    num_samples = o.num_samples if samples is None else samples.shape[0]
    coefficients = _coefficients(embed_fn, query, references, key, segments, samples, capacity, num_samples,
                                 o.kernel_width, o.ridge_alpha, o.batch_size, o.similarity, o.compute_dtype)
    return result(coefficients[:, segments], num_samples)


def lime_variable_core(embed_fn, query, references, key, options: LimeVariable, segments, *,
                       capacity) -> SaliencyResult:
    """``[K, H, W]`` for ``references [K, H, W, C]``: the mean over J RISE-masked copies of each
    reference (masks from ``fold_in(key, 1)``, samples from ``fold_in(key, 0)``); traceable."""
    o = options
    embed_fn = engine.in_compute_dtype(embed_fn, o.compute_dtype)
    checks.embedding_dim(embed_fn, references.shape[1:], name="reference")
    ref_masks = _masks.rise_mask_fn(references.shape[1:], key=jax.random.fold_in(key, 1), grid_size=o.grid_size,
                                    p=o.p)(jnp.arange(o.num_reference_masks))
    count = references.shape[0]
    masked = (references[:, None] * ref_masks[None, ..., None]).reshape(-1, *references.shape[1:])
    embeddings = engine.embed_in_chunks(embed_fn, masked, o.batch_size)
    coefficients = _coefficients(embed_fn, query, embeddings, jax.random.fold_in(key, 0), segments, None, capacity,
                                 o.num_samples, o.kernel_width, o.ridge_alpha, o.batch_size, o.similarity,
                                 o.compute_dtype)
    return result(coefficients.reshape(count, o.num_reference_masks, -1).mean(axis=1)[:, segments], o.num_samples)


_lime_jit = jax.jit(lime_core, static_argnames=("capacity",))
_lime_variable_jit = jax.jit(lime_variable_core, static_argnames=("capacity",))


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
         samples: Optional[jax.Array] = None, segments: Optional[np.ndarray] = None,
         segmentation_image: Optional[np.ndarray] = None, options: Optional[Lime] = None,
         **overrides) -> SaliencyResult:
    """LIME saliency of ``query`` for fixed references (see the module docstring).

    Args:
      embed_fn, query: as in ``sx.saliency.rise``.
      reference_embeddings: ``[D]`` (gives ``[H, W]`` maps) or ``[K, D]`` (gives ``[K, H, W]``).
      key: PRNG key for the samples (drawn on device). Exactly one of ``key`` and ``samples``.
      samples: explicit on/off states ``[N, S]``, one column per superpixel of ``segments``.
      segments: ``[H, W]`` labels overriding the SLIC superpixels (made consecutive; S is the
        number of labels present).
      segmentation_image: the uint8 RGB image SLIC sees (default: the query de-normalised with
        ImageNet mean and std).
      options: a :class:`Lime` (default ``Lime()``).
      **overrides: options replacing those of ``options``, e.g. ``num_samples=500``.

    Returns:
      ``SaliencyResult(maps, passes, error)``: ``passes`` the samples embedded, ``error`` NaN.
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_reference_embeddings(reference_embeddings)
    checks.check_key_or_masks(key, samples, what="samples")
    if samples is not None:
        overrides = dict(overrides, num_samples=2)  # the samples give N
    options = resolve(Lime, options, overrides)
    segments, count = _check_segments(segments, query, options.num_segments, segmentation_image)
    if samples is not None:
        samples = jnp.asarray(samples, jnp.float32)
        if samples.ndim != 2 or samples.shape[1] != count or samples.shape[0] < 2:
            raise ValueError(f"samples must be on/off states [N, S] with N >= 2 and S = {count} superpixels, got "
                             f"shape {tuple(samples.shape)}")
    capacity = segment_capacity(count, options.num_segments)
    if samples is not None:
        samples = jnp.pad(samples, ((0, 0), (0, capacity - count)))
    return squeeze(_lime_jit(embed_fn, query, refs, key, options, segments, samples=samples, capacity=capacity),
                   single)


def lime_variable(embed_fn: EmbedFn, query: ArrayLike, reference: ArrayLike, *, key: jax.Array,
                  segments: Optional[np.ndarray] = None, segmentation_image: Optional[np.ndarray] = None,
                  options: Optional[LimeVariable] = None, **overrides) -> SaliencyResult:
    """LIME with a variable reference: the mean over J RISE-masked copies of each reference.

    Args:
      embed_fn, query: as in ``sx.saliency.rise``.
      reference: an image ``[H, W, C]`` (gives ``[H, W]``) or images ``[K, H, W, C]`` (gives ``[K, H, W]``).
      key: PRNG key (samples from ``fold_in(key, 0)``, reference masks from ``fold_in(key, 1)``).
      segments, segmentation_image: as in :func:`lime`.
      options: a :class:`LimeVariable` (default ``LimeVariable()``).
      **overrides: options replacing those of ``options``.

    Returns:
      ``SaliencyResult(maps, passes, error)``: ``passes`` the query samples embedded, ``error`` NaN.
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_image_or_batch(reference, "reference")
    if key is None:
        raise ValueError("lime_variable needs key= (samples and reference masks are drawn from it)")
    checks.check_key(key)
    if refs.shape[-1] != query.shape[-1]:
        raise ValueError(f"reference has {refs.shape[-1]} channels but query has {query.shape[-1]}")
    options = resolve(LimeVariable, options, overrides)
    segments, count = _check_segments(segments, query, options.num_segments, segmentation_image)
    return squeeze(_lime_variable_jit(embed_fn, query, refs, key, options, segments,
                                      capacity=segment_capacity(count, options.num_segments)), single)
