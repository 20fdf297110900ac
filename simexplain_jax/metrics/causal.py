"""Causal saliency metrics: insertion and deletion (docs/method.md, "Insertion and deletion"; the paper's Table 1).

For ``t = 0, 1/(S-1), ..., 1`` and ``k = max(round(H*W*t), 1)``:

- insertion keeps the k most salient pixels of the query and sets the rest to the background;
- deletion sets the k most salient pixels to the background and keeps the rest;

each perturbed query is scored by its similarity to the intact reference (2 S forward passes,
embedded in compiled chunks). Ties in the saliency are broken by pixel index (row-major).
Each curve is min-max normalised per pair and integrated with the trapezoid rule over t, so an
AUC lies in [0, 1] (the paper reports it x 100). Insertion: higher is better; deletion: lower.

A flat curve (range below ``FLAT_TOLERANCE``) carries no ranking information: its normalised
form is defined as 0.5 everywhere, so its AUC is 0.5, neither good nor bad.

Substrates: ``protocol="sane"`` uses one constant ``background`` (a scalar, a ``[C]`` colour or an
``[H, W, C]`` image, in the query's input space: SANE uses white for Polyvore and grey 127 for
AwA2, normalised like the images) for both curves; ``protocol="rise"`` is the original RISE
metric: a blurred query (RISE's own kernel ``gkern(11, 5)``, a Gaussian filter of an 11 x 11
impulse, with zero padding; see ``imageops.rise_kernel``) for insertion and zeros for deletion.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.typing import ArrayLike

from simexplain_jax import checks, engine, parallel
from simexplain_jax.engine import EmbedFn
from simexplain_jax.imageops import gaussian_blur
from simexplain_jax.similarity import SimilarityFn, cosine

FLAT_TOLERANCE = 1e-6
PROTOCOLS = ("sane", "rise")
NORMALIZATIONS = ("minmax", "none")


class InsertionDeletion(NamedTuple):
    insertion_auc: jax.Array  # scalar in [0, 1] when normalised
    deletion_auc: jax.Array
    insertion_curve: jax.Array  # [S]
    deletion_curve: jax.Array  # [S]


def pixel_counts(num_pixels: int, num_steps: int) -> np.ndarray:
    """``k_j = max(round(num_pixels * t_j), 1)`` for ``t_j = j / (num_steps - 1)`` (round half to even)."""
    t = np.linspace(0.0, 1.0, num_steps)
    return np.maximum(np.round(num_pixels * t), 1).astype(np.int32)


def minmax_normalize(curve: jax.Array) -> jax.Array:
    """``(c - min) / (max - min)``; a flat curve becomes 0.5 everywhere (finite, documented)."""
    lo, hi = jnp.min(curve, axis=-1, keepdims=True), jnp.max(curve, axis=-1, keepdims=True)
    span = hi - lo
    flat = span <= FLAT_TOLERANCE
    return jnp.where(flat, 0.5, (curve - lo) / jnp.where(flat, 1.0, span))


def trapezoid_auc(curve: jax.Array) -> jax.Array:
    """Trapezoid integral of ``curve [..., S]`` sampled uniformly on t in [0, 1]."""
    dt = 1.0 / (curve.shape[-1] - 1)
    return jnp.sum(curve[..., 1:] + curve[..., :-1], axis=-1) * (dt / 2.0)


def pixel_ranks(saliency: jax.Array) -> jax.Array:
    """``[H, W]`` -> rank of each pixel in descending saliency (0 = most salient; ties by index)."""
    flat = saliency.reshape(-1)
    order = jnp.argsort(-flat, stable=True)
    ranks = jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
    return ranks.reshape(saliency.shape)


def _curves(embed_fn, query, reference_embedding, saliency, insertion_substrate, deletion_substrate, num_steps,
            normalize, batch_size, similarity, compute_dtype):
    embed_fn = engine.in_compute_dtype(embed_fn, compute_dtype)
    height, width = saliency.shape
    counts = jnp.asarray(pixel_counts(height * width, num_steps))
    ranks = pixel_ranks(saliency)

    def perturb(indices):
        indices = jnp.minimum(indices, 2 * num_steps - 1)
        step = indices % num_steps
        deleting = (indices >= num_steps)[:, None, None, None]
        top_k = (ranks[None] < counts[step][:, None, None])[..., None]  # [B, H, W, 1]
        from_query = jnp.where(deleting, ~top_k, top_k)
        substrate = jnp.where(deleting, deletion_substrate[None], insertion_substrate[None])
        return jnp.where(from_query, query[None], substrate), None

    result = engine.run(embed_fn, reference_embedding[None], perturb, 2 * num_steps, batch_size, similarity,
                        accumulate_maps=False, return_scores=True)
    curves = result.scores[:, 0].reshape(2, num_steps)
    if normalize == "minmax":
        curves = minmax_normalize(curves)
    auc = trapezoid_auc(curves)
    return InsertionDeletion(auc[0], auc[1], curves[0], curves[1])


@jax.jit(static_argnames=("protocol", "num_steps", "normalize", "batch_size", "similarity", "compute_dtype"))
def _insertion_deletion_jit(embed_fn, query, reference_embedding, saliency, background, *, protocol, num_steps,
                            normalize, batch_size, similarity, compute_dtype):
    dim = checks.embedding_dim(embed_fn, query.shape)
    checks.check_embedding_dims(dim, reference_embedding, name="reference_embedding")
    if protocol == "rise":
        insertion_substrate, deletion_substrate = gaussian_blur(query), jnp.zeros_like(query)
    else:
        insertion_substrate = deletion_substrate = jnp.broadcast_to(background, query.shape)
    return _curves(embed_fn, query, reference_embedding, saliency, insertion_substrate, deletion_substrate,
                   num_steps, normalize, batch_size, similarity, compute_dtype)


def insertion_deletion(
    embed_fn: EmbedFn,
    query: ArrayLike,
    reference_embedding: ArrayLike,
    saliency: ArrayLike,
    *,
    background: Optional[ArrayLike] = None,
    protocol: str = "sane",
    num_steps: int = 101,
    normalize: str = "minmax",
    batch_size: int = 256,
    similarity: SimilarityFn = cosine,
    compute_dtype: str = "float32",
) -> InsertionDeletion:
    """Insertion and deletion curves and AUCs of one saliency map (see the module docstring).

    Args:
      embed_fn: pure ``images [B, H, W, C] -> [B, D]``.
      query: ``[H, W, C]`` float32 in the model's input space.
      reference_embedding: ``[D]``, the embedding of the intact reference.
      saliency: ``[H, W]`` map over the query (higher = more salient); must be finite.
      background: the constant substrate (scalar, ``[C]`` or ``[H, W, C]``), required when
        ``protocol="sane"``; must be None for ``protocol="rise"``.
      protocol: ``"sane"`` (constant background) or ``"rise"`` (blurred query / zeros).
      num_steps: S points on t in [0, 1] (101 as the paper).
      normalize: ``"minmax"`` (per curve, as the paper) or ``"none"`` (raw similarities).
      batch_size: perturbed images per compiled chunk.
      compute_dtype: ``"float32"`` or ``"bfloat16"``, the dtype of the embedding forward pass of the
        perturbed queries (``engine.in_compute_dtype``); the similarities, curves and AUCs stay
        float32. Pass a ``reference_embedding`` computed in the same dtype for a consistent curve.

    Returns:
      ``InsertionDeletion(insertion_auc, deletion_auc, insertion_curve [S], deletion_curve [S])``.
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    if not hasattr(reference_embedding, "shape"):
        reference_embedding = np.asarray(reference_embedding)
    if reference_embedding.ndim != 1 or reference_embedding.shape[0] < 1:
        raise ValueError(f"reference_embedding must be one embedding [D], got shape {tuple(reference_embedding.shape)}")
    reference_embedding = jnp.asarray(reference_embedding, jnp.float32)
    checks.check_finite(reference_embedding, "reference_embedding")
    if not hasattr(saliency, "shape"):
        saliency = np.asarray(saliency)
    if tuple(saliency.shape) != tuple(query.shape[:2]):
        raise ValueError(f"saliency must be [H, W] = {tuple(query.shape[:2])} like the query, "
                         f"got {tuple(saliency.shape)}")
    saliency = jnp.asarray(saliency, jnp.float32)
    if not bool(jnp.all(jnp.isfinite(saliency))):
        raise ValueError("saliency contains NaN or infinite values")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "sane":
        background = jnp.asarray(check_background(background, query.shape))
    elif background is not None:
        raise ValueError("protocol='rise' uses its own substrates (blurred query, zeros): pass background=None")
    compute_dtype = _check_options(num_steps, normalize, batch_size, similarity, compute_dtype)
    return _insertion_deletion_jit(
        embed_fn, query, reference_embedding, saliency, background, protocol=protocol, num_steps=int(num_steps),
        normalize=normalize, batch_size=int(batch_size), similarity=similarity, compute_dtype=compute_dtype,
    )


def _check_options(num_steps, normalize, batch_size, similarity, compute_dtype) -> str:
    checks.check_positive_int(num_steps, "num_steps", 2)
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    checks.check_batch_size(batch_size)
    checks.check_similarity(similarity)
    return checks.check_compute_dtype(compute_dtype)


def check_background(background, image_shape) -> np.ndarray:
    """The constant substrate as float32: a scalar, ``[C]`` or ``image_shape``; raises naming what is wrong."""
    if background is None:
        raise ValueError("background is required for protocol='sane' (a scalar, [C] or [H, W, C] in the query's space)")
    background = np.asarray(background, np.float32)
    try:
        np.broadcast_shapes(background.shape, tuple(image_shape))
    except ValueError:
        raise ValueError(f"background of shape {background.shape} does not broadcast to the query "
                         f"{tuple(image_shape)}") from None
    if not np.all(np.isfinite(background)):
        raise ValueError("background contains NaN or infinite values")
    return background


@dataclasses.dataclass(frozen=True)
class _PairCurves:
    """One pair's two curves with the options bound; hashable, so ``map_queries`` compiles once."""

    num_steps: int
    normalize: str
    batch_size: int
    similarity: SimilarityFn
    compute_dtype: str

    def __call__(self, shared, query, reference_embedding, saliency):
        embed_fn, substrate = shared
        result = _curves(embed_fn, query, reference_embedding, saliency, substrate, substrate, self.num_steps,
                         self.normalize, self.batch_size, self.similarity, self.compute_dtype)
        return jnp.stack([result.insertion_curve, result.deletion_curve])


def insertion_deletion_batch(embed_fn: EmbedFn, queries: ArrayLike, reference_embeddings: ArrayLike,
                             saliencies: ArrayLike, *, background: Optional[ArrayLike], num_steps: int = 101,
                             normalize: str = "minmax", batch_size: int = 256, similarity: SimilarityFn = cosine,
                             mesh: Optional[Mesh] = None, pair_group: int = 16,
                             compute_dtype: str = "float32") -> InsertionDeletion:
    """``insertion_deletion`` (SANE protocol) for P pairs, equal to per-pair calls to float rounding.

    The compiled program is cached: later calls with the same shapes compile nothing. Non-finite
    inputs raise, naming the argument and rows; so does a curve made of NaN (an ``embed_fn`` that
    fails on some perturbed query), naming the pairs.

    Args:
      embed_fn: pure ``images [B, H, W, C] -> [B, D]``.
      queries: ``[P, H, W, C]`` float32 in the model's input space.
      reference_embeddings: ``[P, D]``, one per pair.
      saliencies: ``[P, H, W]`` maps over the queries.
      background, num_steps, normalize, batch_size, similarity: as in :func:`insertion_deletion`.
      mesh: a ``jax.sharding.Mesh`` (``sx.parallel.make_mesh``): each step spreads ``pair_group``
        pairs over every device (default: one local device).
      pair_group: pairs vmapped together per device.
      compute_dtype: as in :func:`insertion_deletion` (the parameters are cast once, before the
        pairs are sent to the devices).

    Returns:
      ``InsertionDeletion`` whose fields have a leading P axis.
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    queries = checks.check_images(queries, "queries")
    refs = np.asarray(reference_embeddings, np.float32)
    maps = np.asarray(saliencies, np.float32)
    if refs.ndim != 2 or refs.shape[:1] != queries.shape[:1] or maps.shape != queries.shape[:3]:
        raise ValueError(f"need queries [P, H, W, C], reference_embeddings [P, D], saliencies [P, H, W]; got "
                         f"{queries.shape}, {refs.shape}, {maps.shape}")
    checks.check_finite(refs, "reference_embeddings")
    checks.check_finite(maps, "saliencies")
    compute_dtype = _check_options(num_steps, normalize, batch_size, similarity, compute_dtype)
    embed_fn = engine.in_compute_dtype(embed_fn, compute_dtype)  # cast once; _curves then leaves it as is
    pair_group = checks.check_positive_int(pair_group, "pair_group")
    substrate = np.broadcast_to(check_background(background, queries.shape[1:]), queries.shape[1:]).copy()
    mesh = parallel.make_mesh(1, local=True) if mesh is None else mesh
    step = pair_group * parallel.stack_size(mesh)
    fn = _PairCurves(int(num_steps), normalize, int(batch_size), similarity, compute_dtype)
    curves = np.concatenate([parallel.map_queries(fn, mesh, (embed_fn, substrate), queries[i:i + step],
                                                  refs[i:i + step], maps[i:i + step])
                             for i in range(0, len(queries), step)])  # [P, 2, S]
    bad = np.flatnonzero(~np.isfinite(curves).reshape(len(curves), -1).all(axis=1))
    if len(bad):  # never an AUC of 0.5 (a "flat" curve) made of NaN
        raise ValueError(f"non-finite similarities on the insertion/deletion curves of pairs {bad[:10].tolist()}: "
                         "embed_fn returned NaN or infinite embeddings for their perturbed queries")
    auc = np.asarray(trapezoid_auc(jnp.asarray(curves)))
    return InsertionDeletion(auc[:, 0], auc[:, 1], curves[:, 0], curves[:, 1])
