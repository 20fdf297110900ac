"""RISE saliency for image pairs, fixed and variable reference (docs/method.md, "RISE").

Fixed reference: ``S_k(x) = sum_i s_ik M_i(x) / ((1/N) sum_i M_i(x))`` with
``s_ik = similarity(f(q * M_i), r_k)`` (``normalize="per_pixel"``, SANE's choice and the
default: magnitude about N times the similarity), or ``sum_i s_ik M_i(x) / (N p)``
(``normalize="expected"``, original RISE). All K references share the N masked-query embeddings.

Variable reference: reference k is perturbed by J masks ``M'_j`` (from ``fold_in(key, 1)``; the
query masks come from ``fold_in(key, 0)``) and its map is the mean over j of the fixed-reference
map for ``f(r_k * M'_j)``: N + K J forward passes, not N K J.

``sampler`` chooses how the masks are drawn (``sx.masks.SAMPLERS``); every sampler draws each
mask from the i.i.d. distribution, so the estimators above are unchanged. With ``tolerance`` one
compiled ``lax.while_loop`` runs chunks of masks until each map's standard error is below the
tolerance times its range; the estimate and the stopping rule are derived in docs/method.md
("The stopping rule of tolerance").

``rise_core`` / ``rise_variable_core`` are the pure cores that the single-pair functions,
``explain_pairs`` and the mesh path all run; with ``mask_axis`` (inside ``shard_map``) each
device takes a share of the N masks and the partial sums are added with ``psum``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.typing import ArrayLike

from simexplain_jax import checks, engine
from simexplain_jax import masks as _masks
from simexplain_jax import parallel
from simexplain_jax.engine import EmbedFn
from simexplain_jax.saliency._options import (CoreCall, MethodOptions, SaliencyResult, options_class, resolve,
                                              result, set_field, squeeze)
from simexplain_jax.similarity import SimilarityFn, cosine, pairwise

NORMALIZATIONS = ("per_pixel", "expected")
MIN_GROUPS = 4  # replicate groups needed before a tolerance run may stop (their variance has n - 1 dof)
FLAT = 1e-4  # the range a tolerance is relative to is at least FLAT times the map's largest magnitude
_HIGHEST = jax.lax.Precision.HIGHEST


def check_tolerance(tolerance) -> Optional[float]:
    """None, or a finite float > 0 (the map's standard error relative to its range)."""
    if tolerance is None:
        return None
    number = (not isinstance(tolerance, (bool, np.bool_)) and np.ndim(tolerance) == 0
              and np.issubdtype(np.asarray(tolerance).dtype, np.number))
    if not number or not 0.0 < float(tolerance) < float("inf"):
        raise ValueError(f"tolerance must be None or a finite number > 0 (the map's standard error relative to "
                         f"its range, e.g. 0.02), got {tolerance!r}")
    return float(tolerance)


@options_class("rise", references="embeddings", traced=("p", "tolerance"), split_masks=True)
class Rise(MethodOptions):
    """Options of RISE with fixed references (:func:`rise`).

    Attributes:
      num_masks: N, the number of masks (with ``tolerance``, the most masks used).
      grid_size: s, the side of the binary grid each mask is upsampled from.
      p: the probability that a grid cell is kept (traced: a sweep over it compiles once).
      batch_size: masks per compiled chunk; the maps do not depend on it (to float rounding),
        except that with ``tolerance`` the stopping test runs after each chunk.
      normalize: ``"per_pixel"`` (divide by each pixel's mean mask) or ``"expected"`` (by N p).
      similarity: broadcasting ``[..., D] x [..., D] -> [...]``.
      sampler: ``"orthogonal"`` (the default: blocks of masks from randomised orthogonal arrays,
        which converge in fewer passes), ``"iid"`` (the original RISE masks), ``"antithetic"`` or
        ``"stratified"`` (``simexplain_jax/masks.py``); each mask has the i.i.d. distribution.
      tolerance: None (use N masks) or t > 0: stop once every map's standard error is below t
        times its range (traced).
      compute_dtype: ``"float32"`` or ``"bfloat16"``, the dtype of the embedding forward pass
        (``engine.in_compute_dtype``); scores and the map sums stay float32.
    """

    num_masks: int = 2000
    grid_size: int = 8
    p: float = 0.5
    batch_size: int = 256
    normalize: str = "per_pixel"
    similarity: SimilarityFn = cosine
    sampler: str = "orthogonal"
    tolerance: Optional[float] = None
    compute_dtype: str = "float32"

    def __post_init__(self):
        num_masks, grid_size, p = _masks.check_rise_options(self.num_masks, self.grid_size, self.p)
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        checks.check_similarity(self.similarity)
        for name, value in dict(num_masks=num_masks, grid_size=grid_size, p=p,
                                batch_size=checks.check_batch_size(self.batch_size),
                                sampler=_masks.check_sampler(self.sampler), tolerance=check_tolerance(self.tolerance),
                                compute_dtype=checks.check_compute_dtype(self.compute_dtype)).items():
            set_field(self, name, value)

    def core(self, embed_fn, query, references, key, **context) -> SaliencyResult:
        return rise_core(embed_fn, query, references, key, self, **context)


@options_class("rise_variable", references="images", traced=("p", "tolerance"), split_masks=True)
class RiseVariable(Rise):
    """Options of RISE with a variable reference (:func:`rise_variable`): those of :class:`Rise` and

    Attributes:
      num_reference_masks: J, the RISE masks each reference is perturbed by.
    """

    num_reference_masks: int = 30

    def __post_init__(self):
        super().__post_init__()
        set_field(self, "num_reference_masks", checks.check_positive_int(self.num_reference_masks,
                                                                         "num_reference_masks"))

    def core(self, embed_fn, query, references, key, **context) -> SaliencyResult:
        return rise_variable_core(embed_fn, query, references, key, self, **context)


def _normalize_maps(weighted, mask_sum, num_masks, p, normalize):
    if normalize == "per_pixel":
        # SANE: S(x) = sum_i s_i M_i(x) / ((1/N) sum_i M_i(x)); a never-kept pixel gets 0.
        kept = mask_sum / num_masks
        return jnp.where(kept > 0, weighted / jnp.where(kept > 0, kept, 1.0), 0.0)
    return weighted / (num_masks * p)  # original RISE: S(x) = sum_i s_i M_i(x) / (N p)


def _accumulate_until(embed_fn, references, perturb, *, num_masks, batch_size, similarity, group, tolerance,
                      normalize, p, reference_groups, mask_axis, mask_axis_size):
    """The tolerance loop (docs/method.md, "The stopping rule of tolerance"): one ``lax.while_loop``
    over chunks. Returns
    ``(weighted [K', P], mask_sum [P], used, relative error [K'])`` with K' = K / reference_groups
    (scores averaged over each group of references, which is the mean of their per-pixel maps:
    they share ``mask_sum``)."""
    devices = mask_axis_size if mask_axis is not None else 1
    local = group * -(-batch_size // (devices * group))  # this device's masks per chunk: whole groups
    chunk = local * devices
    max_steps = -(-num_masks // chunk)
    offset = jax.lax.axis_index(mask_axis) * local if mask_axis is not None else 0
    probe_images, probe_masks = jax.eval_shape(perturb, jnp.zeros((local,), jnp.int32))
    pixels = probe_masks.shape[1] * probe_masks.shape[2]
    count = references.shape[0] // reference_groups

    def total(x):
        return jax.lax.psum(x, mask_axis) if mask_axis is not None else x

    def body(carry):
        step, center, weighted, mask_sum, yy, ym, mm, level, groups, used, _ = carry
        indices = step * chunk + offset + jnp.arange(local, dtype=jnp.int32)
        valid = (indices < num_masks).astype(jnp.float32)
        images, masks = perturb(jnp.minimum(indices, num_masks - 1))
        scores = pairwise(similarity, embed_fn(images), references).astype(jnp.float32)  # [b, K]
        scores = scores.reshape(local, count, reference_groups).mean(axis=2) * valid[:, None]
        # the second moments use scores centred on the first chunk's mean (less float cancellation)
        first = total([jnp.sum(scores, axis=0), jnp.sum(valid)])
        center = jnp.where(step == 0, first[0] / jnp.maximum(first[1], 1.0), center)
        centred = (scores - center) * valid[:, None]
        flat = masks.reshape(local, pixels) * valid[:, None]
        inc = [jnp.matmul(scores.T, flat, precision=_HIGHEST), jnp.sum(flat, axis=0)]
        if group == 1:  # y_i = s_i M_i, m_i = M_i: the group sums of squares are matrix products
            squares = flat * flat
            inc += [jnp.matmul((centred * centred).T, squares, precision=_HIGHEST),
                    jnp.matmul(centred.T, squares, precision=_HIGHEST), jnp.sum(squares, axis=0)]
        else:
            y = jnp.einsum("gik,gip->gkp", centred.reshape(-1, group, count), flat.reshape(-1, group, pixels),
                           precision=_HIGHEST)  # [local / B, K', P]
            m = flat.reshape(-1, group, pixels).sum(axis=1)
            inc += [jnp.sum(y * y, axis=0), jnp.sum(y * m[:, None], axis=0), jnp.sum(m * m, axis=0)]
        inc += [jnp.sum(valid.reshape(-1, group).max(axis=1)), jnp.sum(valid)]
        inc = total(inc)
        weighted, mask_sum, yy, ym, mm, groups, used = (a + b for a, b in
                                                         zip((weighted, mask_sum, yy, ym, mm, groups, used), inc))
        # for each group's influence on the map's level (its mean over the pixels): per_pixel,
        # a_g = mean_x y_g' / mbar and w_g = mean_x m_g / mbar (mbar = Msum / n as the chunk is
        # added), the influence being a_g - (mean_x R - c) w_g; expected, ybar_g = mean_x y_g
        if normalize == "per_pixel":
            kept = mask_sum > 0
            inverse = jnp.where(kept, groups / jnp.where(kept, mask_sum, 1.0), 0.0)  # 1 / mbar
            w = (jnp.matmul(flat, inverse, precision=_HIGHEST) / pixels).reshape(-1, group).sum(axis=1)
            a = (centred * (jnp.matmul(flat, inverse, precision=_HIGHEST) / pixels)[:, None]).reshape(
                -1, group, count).sum(axis=1)  # [local / B, K']
            level = level + total(jnp.stack([jnp.sum(a * a, axis=0), jnp.sum(a * w[:, None], axis=0),
                                             jnp.broadcast_to(jnp.sum(w * w), (count,))]))
        else:
            ybar = (scores * jnp.mean(flat, axis=1)[:, None]).reshape(-1, group, count).sum(axis=1)
            level = level + total(jnp.stack([jnp.sum(ybar * ybar, axis=0)] + [jnp.zeros((count,))] * 2))
        return step + 1, center, weighted, mask_sum, yy, ym, mm, level, groups, used, _relative_error(
            weighted, mask_sum, yy, ym, mm, level, groups, used, center, normalize, p)

    def cond(carry):
        step, groups, relative = carry[0], carry[8], carry[-1]
        return (step < max_steps) & ((groups < MIN_GROUPS) | jnp.any(relative >= tolerance))

    zeros_k, zeros = jnp.zeros((count, pixels), jnp.float32), jnp.zeros((pixels,), jnp.float32)
    init = (jnp.zeros((), jnp.int32), jnp.zeros((count,), jnp.float32), zeros_k, zeros, zeros_k, zeros_k, zeros,
            jnp.zeros((3, count), jnp.float32), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
            jnp.full((count,), jnp.inf, jnp.float32))
    _, _, weighted, mask_sum, *_, used, relative = jax.lax.while_loop(cond, body, init)
    return weighted, mask_sum, used, relative


def _relative_error(weighted, mask_sum, yy, ym, mm, level, groups, used, center, normalize, p):
    """``[K]``: each map's standard error up to its level over its range (docs/method.md, "The
    stopping rule of tolerance").
    ``yy, ym`` are the group sums of products with the scores minus ``center [K]``, ``level [3, K]``
    the sums for the groups' influences on the map's mean; the range is at least ``FLAT``
    times the map's largest magnitude (a map flat to float precision)."""
    n = jnp.maximum(groups, 1.0)
    correction = groups / jnp.maximum(groups - 1.0, 1.0)
    center = center[:, None]
    shifted = weighted - center * mask_sum  # sum_g y_g' with y_g' = sum_{i in g} (s_i - c) M_i
    if normalize == "per_pixel":
        kept = mask_sum > 0
        safe = jnp.where(kept, mask_sum, 1.0)
        ratio = jnp.where(kept, shifted / safe, 0.0)  # R - c: the residuals y_g - R m_g do not change
        residual = jnp.maximum(yy - 2.0 * ratio * ym + ratio * ratio * mm, 0.0)
        variance = jnp.where(kept, used * used * correction * residual / (safe * safe), 0.0)
        ratio_mean = jnp.sum(jnp.where(kept, ratio, 0.0), axis=-1) / jnp.maximum(jnp.sum(kept), 1)  # mean R - c
        influence = jnp.maximum(level[0] - 2.0 * ratio_mean * level[1] + ratio_mean * ratio_mean * level[2], 0.0)
        level_variance = used * used * correction * influence / (n * n)
        maps = jnp.where(kept, used * weighted / safe, 0.0)
    else:  # sum_g (y_g - mean)^2 with y_g = y_g' + c m_g
        spread_y = yy - shifted * shifted / n
        cross = ym - shifted * mask_sum / n
        spread_m = mm - mask_sum * mask_sum / n
        residual = jnp.maximum(spread_y + 2.0 * center * cross + center * center * spread_m, 0.0)
        scale = (jnp.maximum(used, 1.0) * p) ** 2
        variance = correction * residual / scale
        mean_y = jnp.mean(weighted, axis=-1)
        level_variance = correction * jnp.maximum(level[0] - mean_y * mean_y / n, 0.0) / scale
        maps = weighted / (jnp.maximum(used, 1.0) * p)
    # root mean square over the pixels of the standard error of S(x) - mean_x S
    typical = jnp.sqrt(jnp.maximum(jnp.mean(variance, axis=-1) - level_variance, 0.0))
    spread = jnp.maximum(maps.max(axis=-1) - maps.min(axis=-1), FLAT * jnp.abs(maps).max(axis=-1))
    relative = jnp.where(typical > 0, typical / jnp.where(spread > 0, spread, 1.0), 0.0)
    return jnp.where((typical > 0) & (spread <= 0), jnp.inf, relative)


def rise_core(embed_fn, query, references, key, options: Rise, *, masks=None, mask_axis: Optional[str] = None,
              mask_axis_size: int = 1, reference_groups: int = 1) -> SaliencyResult:
    """``[K, H, W]`` maps of ``query [H, W, C]`` for ``references [K, D]``; traceable.

    Masks from ``key`` (mask i of the sampler from its index, ``sx.masks.rise_mask_fn``) or the
    explicit ``masks [N, H, W]`` (treated as i.i.d. for ``tolerance``). ``reference_groups`` = J:
    the references are K / J groups of J and each group's maps are averaged (``[K / J, H, W]``).
    """
    o = options
    num_masks, grid_size, p, batch_size = o.num_masks, o.grid_size, o.p, o.batch_size
    embed_fn = engine.in_compute_dtype(embed_fn, o.compute_dtype)
    checks.check_embedding_dims(checks.embedding_dim(embed_fn, query.shape), references)
    offset, local = 0, None
    group = _masks.sampler_block(o.sampler, grid_size)
    if masks is not None:
        num_masks, group = masks.shape[0], 1

        def masks_for(indices):
            return jnp.take(masks, jnp.minimum(indices, num_masks - 1), axis=0)
    else:
        masks_for = _masks.rise_mask_fn(query.shape, key=key, grid_size=grid_size, p=p, sampler=o.sampler)
        if mask_axis is not None and o.tolerance is None:  # this device's share of the N masks
            local = -(-num_masks // mask_axis_size)
            offset = jax.lax.axis_index(mask_axis) * local
    perturb = engine.masked_perturbation(query, masks_for)
    if o.tolerance is not None:
        weighted, mask_sum, used, relative = _accumulate_until(
            embed_fn, references, perturb, num_masks=num_masks, batch_size=batch_size, similarity=o.similarity,
            group=group, tolerance=o.tolerance, normalize=o.normalize, p=p, reference_groups=reference_groups,
            mask_axis=mask_axis if masks is None else None, mask_axis_size=mask_axis_size)
        weighted = weighted.reshape(-1, *query.shape[:2])
        maps = _normalize_maps(weighted, mask_sum.reshape(query.shape[:2]), used, p, o.normalize)
        return result(maps, used.astype(jnp.int32), relative)
    out = engine.run(embed_fn, references, perturb, num_masks, batch_size, o.similarity, index_offset=offset,
                     num_local=local)
    weighted, mask_sum = out.weighted, out.mask_sum
    if local is not None:
        weighted, mask_sum = jax.lax.psum(weighted, mask_axis), jax.lax.psum(mask_sum, mask_axis)
    maps = _normalize_maps(weighted, mask_sum, num_masks, p, o.normalize)
    maps = maps.reshape(-1, reference_groups, *maps.shape[1:]).mean(axis=1)
    return result(maps, num_masks)


def rise_variable_core(embed_fn, query, references, key, options: RiseVariable, *, masks=None,
                       reference_masks=None, mask_axis: Optional[str] = None,
                       mask_axis_size: int = 1) -> SaliencyResult:
    """``[K, H, W]``: the variable-reference map of ``query`` for each of ``references [K, H, W, C]``.

    The reference masks are the first J masks of the sampler from ``fold_in(key, 1)`` (or the
    explicit ``reference_masks [J, H, W]``)."""
    o = options
    forward = engine.in_compute_dtype(embed_fn, o.compute_dtype)
    checks.embedding_dim(forward, references.shape[1:], name="reference")
    query_key = None
    if key is not None:
        query_key = jax.random.fold_in(key, 0)
        masks_for = _masks.rise_mask_fn(references.shape[1:], key=jax.random.fold_in(key, 1),
                                        grid_size=o.grid_size, p=o.p, sampler=o.sampler)
        reference_masks = masks_for(jnp.arange(o.num_reference_masks))
    per_reference = reference_masks.shape[0]
    masked = (references[:, None] * reference_masks[None, ..., None]).reshape(-1, *references.shape[1:])
    embeddings = engine.embed_in_chunks(forward, masked, o.batch_size)  # K J forward passes
    # N forward passes; the K J maps averaged over each reference's J masks
    return rise_core(embed_fn, query, embeddings, query_key, o, masks=masks, mask_axis=mask_axis,
                     mask_axis_size=mask_axis_size, reference_groups=per_reference)


_CONTEXT = ("mask_axis", "mask_axis_size", "reference_groups")
_rise_jit = jax.jit(rise_core, static_argnames=_CONTEXT)
_rise_variable_jit = jax.jit(rise_variable_core, static_argnames=_CONTEXT[:2])


def rise(embed_fn: EmbedFn, query: ArrayLike, reference_embeddings: ArrayLike, *, key: Optional[jax.Array] = None,
         masks: Optional[jax.Array] = None, options: Optional[Rise] = None, **overrides) -> SaliencyResult:
    """RISE saliency of ``query`` for fixed (unperturbed) references.

    Args:
      embed_fn: pure ``images [B, H, W, C] float32 -> [B, D]``; a ``jax.tree_util.Partial``
        (e.g. ``Partial(model.apply, variables)``) passes the parameters as arguments.
      query: ``[H, W, C]`` float, in the model's input space (masked pixels become 0 there).
      reference_embeddings: ``[D]`` (gives ``[H, W]`` maps) or ``[K, D]`` (gives ``[K, H, W]``).
      key: PRNG key for the masks (mask i from its index, as ``sx.masks.rise_masks``).
        Exactly one of ``key`` and ``masks``.
      masks: explicit ``[N, H, W]`` masks (then ``num_masks``, ``grid_size`` and ``sampler`` are unused).
      options: a :class:`Rise` (default ``Rise()``).
      **overrides: options replacing those of ``options``, e.g. ``num_masks=500``.

    Returns:
      ``SaliencyResult(maps, passes, error)``: ``passes`` the masks used (N, or fewer with
      ``tolerance``), ``error`` each map's estimated standard error over its range (NaN without
      ``tolerance``).
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_reference_embeddings(reference_embeddings)
    checks.check_key_or_masks(key, masks)
    if masks is not None:
        overrides = dict(overrides, num_masks=1)  # the masks give N
    options = resolve(Rise, options, overrides)
    if masks is not None:
        masks = checks.check_masks(masks, query)
    return squeeze(_rise_jit(embed_fn, query, refs, key, options, masks=masks), single)


def rise_variable(embed_fn: EmbedFn, query: ArrayLike, reference: ArrayLike, *, key: Optional[jax.Array] = None,
                  masks: Optional[jax.Array] = None, reference_masks: Optional[jax.Array] = None,
                  options: Optional[RiseVariable] = None, **overrides) -> SaliencyResult:
    """RISE saliency of ``query`` with a variable (perturbed) reference.

    Args:
      embed_fn, query: as in :func:`rise`.
      reference: an image ``[H, W, C]`` (gives ``[H, W]``) or images ``[K, H, W, C]`` (gives
        ``[K, H, W]``, sharing the N masked-query embeddings).
      key: query masks from ``fold_in(key, 0)``, reference masks from ``fold_in(key, 1)``. Either
        ``key`` or both ``masks`` and ``reference_masks``.
      masks, reference_masks: explicit ``[N, H, W]`` and ``[J, H, W]`` masks.
      options: a :class:`RiseVariable` (default ``RiseVariable()``).
      **overrides: options replacing those of ``options``.

    Returns:
      ``SaliencyResult(maps, passes, error)`` as in :func:`rise`; ``passes`` counts the query
      masks (the forward passes are ``passes + K J``).
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_image_or_batch(reference, "reference")
    if refs.shape[-1] != query.shape[-1]:
        raise ValueError(f"reference has {refs.shape[-1]} channels but query has {query.shape[-1]}: both are "
                         "[H, W, C] images for embed_fn")
    if key is not None and (masks is not None or reference_masks is not None):
        raise ValueError("pass either key= or both masks= and reference_masks=, not both")
    if key is None and (masks is None or reference_masks is None):
        raise ValueError("pass either key= or both masks= and reference_masks=")
    if key is not None:
        checks.check_key(key)
    if key is None:
        masks = checks.check_masks(masks, query)
        reference_masks = checks.check_masks(reference_masks, refs[0], name="reference_masks")
        overrides = dict(overrides, num_masks=1, num_reference_masks=reference_masks.shape[0])
    options = resolve(RiseVariable, options, overrides)
    out = _rise_variable_jit(embed_fn, query, refs, key, options, masks=masks, reference_masks=reference_masks)
    return squeeze(out, single)


def rise_split_masks(embed_fn: EmbedFn, query: ArrayLike, reference_embeddings: ArrayLike, *, key: jax.Array,
                     mesh: Mesh, axis: str = parallel.AXIS, options: Optional[Rise] = None,
                     **overrides) -> SaliencyResult:
    """RISE for one pair with its N masks split over the devices along a mesh axis.

    Args:
      embed_fn, query, reference_embeddings: as in :func:`rise`.
      key: PRNG key (each device generates its share of the masks).
      mesh: a ``jax.sharding.Mesh``.
      axis: the mesh axis the masks are divided over (partial maps summed with ``psum``).
      options: a :class:`Rise` (default ``Rise()``).
      **overrides: options replacing those of ``options``.

    Returns:
      ``SaliencyResult`` equal to ``rise(..., key=key)`` to float rounding (with ``tolerance``:
      the same passes when the devices times the sampler's block divide ``batch_size``).
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    query = checks.check_image(query, "query")
    refs, single = checks.check_reference_embeddings(reference_embeddings)
    if key is None:
        raise ValueError("rise_split_masks needs key= (each device generates its share of the masks)")
    checks.check_key(key)
    options = resolve(Rise, options, overrides)
    call = CoreCall.of(mask_axis=axis, mask_axis_size=mesh.shape[axis])
    out = parallel.replicated_call(call, mesh, (embed_fn, options), query, refs, jax.random.key_data(key))
    return squeeze(SaliencyResult(*out), single)
