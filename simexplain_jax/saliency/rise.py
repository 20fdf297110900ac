"""RISE saliency for image pairs, fixed and variable reference (SPEC.md section 2)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from simexplain_jax import masks as _masks
from simexplain_jax.saliency import _common, engine
from simexplain_jax.similarity import SimilarityFn, cosine

NORMALIZATIONS = ("per_pixel", "expected")


def _check_normalize(normalize: str) -> None:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")


def _normalize_maps(weighted: jax.Array, mask_sum: jax.Array, num_masks: int, p: float, normalize: str) -> jax.Array:
    if normalize == "per_pixel":
        # SANE: S(x) = sum_i s_i M_i(x) / ((1/N) sum_i M_i(x)); a never-kept pixel gets 0.
        kept = mask_sum / num_masks
        return jnp.where(kept > 0, weighted / jnp.where(kept > 0, kept, 1.0), 0.0)
    # original RISE: S(x) = sum_i s_i M_i(x) / (N p)
    return weighted / (num_masks * p)


def _rise_maps(embed_fn, query, refs, key, masks, num_masks, grid_size, p, batch_size, normalize, similarity):
    """[K, H, W] maps; traced inside jit by the public functions."""
    dim = _common.embedding_dim(embed_fn, query.shape)
    _common.check_embedding_dims(dim, refs)
    if masks is not None:
        num_masks = masks.shape[0]

        def masks_for(indices):
            return jnp.take(masks, jnp.minimum(indices, num_masks - 1), axis=0)
    else:
        masks_for = _masks.rise_mask_fn(key, grid_size, p, query.shape)
    result = engine.run(
        embed_fn, refs, engine.masked_perturbation(query, masks_for), num_masks, batch_size, similarity
    )
    return _normalize_maps(result.weighted, result.mask_sum, num_masks, p, normalize)


def _rise_maps_share(embed_fn, query, refs, key, num_masks, grid_size, p, batch_size, normalize, similarity, axis,
                     axis_size):
    """Inside ``shard_map``: this device's share of the N masks along mesh ``axis`` (of ``axis_size``
    devices), the partial sums added with ``psum``: the same ``[K, H, W]`` maps as ``_rise_maps``."""
    per_device = -(-num_masks // axis_size)
    masks_for = _masks.rise_mask_fn(key, grid_size, p, query.shape)
    result = engine.run(embed_fn, refs, engine.masked_perturbation(query, masks_for), num_masks, batch_size, similarity,
                        index_offset=jax.lax.axis_index(axis) * per_device, num_local=per_device)
    return _normalize_maps(jax.lax.psum(result.weighted, axis), jax.lax.psum(result.mask_sum, axis), num_masks, p,
                           normalize)


@jax.jit(static_argnames=("num_masks", "grid_size", "p", "batch_size", "normalize", "similarity"))
def _rise_jit(embed_fn, query, refs, key, masks, *, num_masks, grid_size, p, batch_size, normalize, similarity):
    return _rise_maps(embed_fn, query, refs, key, masks, num_masks, grid_size, p, batch_size, normalize, similarity)


def rise(
    embed_fn,
    query,
    reference_embeddings,
    *,
    key: Optional[jax.Array] = None,
    masks: Optional[jax.Array] = None,
    num_masks: int = 2000,
    grid_size: int = 8,
    p: float = 0.5,
    batch_size: int = 256,
    normalize: str = "per_pixel",
    similarity: SimilarityFn = cosine,
) -> jax.Array:
    """RISE saliency of ``query`` for a fixed (unperturbed) reference.

    ``S_k(x) = sum_i s_ik M_i(x) / ((1/N) sum_i M_i(x))`` with ``s_ik = similarity(f(q * M_i), r_k)``
    (``normalize="per_pixel"``, SANE's choice and the default: magnitude about N times the
    similarity), or ``sum_i s_ik M_i(x) / (N p)`` (``normalize="expected"``, original RISE).

    Args:
      embed_fn: pure ``images [B, H, W, C] float32 -> [B, D]``; a ``jax.tree_util.Partial``
        (e.g. ``Partial(model.apply, variables)``) passes the parameters as arguments.
      query: ``[H, W, C]`` float32, in the model's input space (masked pixels become 0 there).
      reference_embeddings: ``[D]`` (gives ``[H, W]``) or ``[K, D]`` (gives ``[K, H, W]``); all K
        maps share the N masked-query embeddings.
      key: PRNG key to generate the masks on device (mask i from ``fold_in(key, i)``, see
        ``sx.masks.rise_masks``). Exactly one of ``key`` and ``masks``.
      masks: explicit ``[N, H, W]`` masks (then ``num_masks``, ``grid_size`` are unused).
      num_masks, grid_size, p: the RISE mask distribution (N, s, keep probability).
      batch_size: masks per compiled chunk; results do not depend on it (to float rounding).
      normalize: ``"per_pixel"`` or ``"expected"``.
      similarity: broadcasting ``[..., D] x [..., D] -> [...]``.
    """
    embed_fn = _common.as_pytree_fn(embed_fn)
    query = _common.check_image(query, "query")
    refs, single = _common.check_reference_embeddings(reference_embeddings)
    _common.check_key_or_masks(key, masks)
    _masks.check_rise_options(num_masks if masks is None else 1, grid_size, p)
    if masks is not None:
        masks = _common.check_masks(masks, query)
    batch_size = _common.check_batch_size(batch_size)
    _check_normalize(normalize)
    _common.check_similarity(similarity)
    maps = _rise_jit(
        embed_fn, query, refs, key, masks, num_masks=int(num_masks), grid_size=int(grid_size), p=float(p),
        batch_size=batch_size, normalize=normalize, similarity=similarity,
    )
    return maps[0] if single else maps


@jax.jit(static_argnames=("num_masks", "num_reference_masks", "grid_size", "p", "batch_size", "normalize", "similarity"))
def _rise_variable_jit(embed_fn, query, reference, key, masks, reference_masks, *, num_masks, num_reference_masks,
                       grid_size, p, batch_size, normalize, similarity):
    _common.embedding_dim(embed_fn, reference.shape, name="reference")
    if key is not None:
        query_key, reference_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
        reference_masks = _masks.rise_mask_fn(reference_key, grid_size, p, reference.shape)(
            jnp.arange(num_reference_masks, dtype=jnp.int32))
    else:
        query_key = None
    masked_references = reference[None] * reference_masks[..., None]
    refs = _common.embed_in_chunks(embed_fn, masked_references, batch_size)  # K forward passes
    maps = _rise_maps(embed_fn, query, refs, query_key, masks, num_masks, grid_size, p, batch_size, normalize,
                      similarity)  # N forward passes, K maps
    return jnp.mean(maps, axis=0)


def rise_variable(
    embed_fn,
    query,
    reference,
    *,
    key: Optional[jax.Array] = None,
    masks: Optional[jax.Array] = None,
    reference_masks: Optional[jax.Array] = None,
    num_masks: int = 2000,
    num_reference_masks: int = 30,
    grid_size: int = 8,
    p: float = 0.5,
    batch_size: int = 256,
    normalize: str = "per_pixel",
    similarity: SimilarityFn = cosine,
) -> jax.Array:
    """RISE saliency of ``query`` with a variable (perturbed) reference: ``[H, W]``.

    The map is the mean over reference masks ``M'_j`` of ``rise(query, f(reference * M'_j))``.
    The N masked-query embeddings do not depend on the reference, so this costs N + K forward
    passes (the reference code does N * K).

    Either ``key`` (query masks from ``fold_in(key, 0)``, reference masks from ``fold_in(key, 1)``,
    as ``sx.masks.rise_masks`` makes them) or both ``masks [N, H, W]`` and
    ``reference_masks [K, H', W']``. Other arguments as in :func:`rise`.
    """
    embed_fn = _common.as_pytree_fn(embed_fn)
    query = _common.check_image(query, "query")
    reference = _common.check_image(reference, "reference")
    if reference.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"reference has {reference.shape[-1]} channels but query has {query.shape[-1]}: both are [H, W, C] images for embed_fn"
        )
    if key is not None and (masks is not None or reference_masks is not None):
        raise ValueError("pass either key= or both masks= and reference_masks=, not both")
    if key is None and (masks is None or reference_masks is None):
        raise ValueError("pass either key= or both masks= and reference_masks=")
    if key is None:
        masks = _common.check_masks(masks, query)
        reference_masks = _common.check_masks(reference_masks, reference, name="reference_masks")
        num_reference_masks = reference_masks.shape[0]
    elif isinstance(num_reference_masks, bool) or not isinstance(num_reference_masks, int) or num_reference_masks < 1:
        raise ValueError(f"num_reference_masks must be an integer >= 1, got {num_reference_masks!r}")
    _masks.check_rise_options(num_masks if masks is None else 1, grid_size, p)
    batch_size = _common.check_batch_size(batch_size)
    _check_normalize(normalize)
    _common.check_similarity(similarity)
    return _rise_variable_jit(
        embed_fn, query, reference, key, masks, reference_masks, num_masks=int(num_masks),
        num_reference_masks=int(num_reference_masks), grid_size=int(grid_size), p=float(p), batch_size=batch_size,
        normalize=normalize, similarity=similarity,
    )
