"""Metrics of second-order explanations: correspondences ``C [hq, wq, hr, wr]`` between the cells of
a query and the cells of its reference (docs/method.md, "Correspondence metrics").

Cells are equal bands of the image: pixel row y is in cell row ``floor(y h / H)`` (the rule of the
RISE mask grid and, for a stride-aligned backbone, of its feature grid).

- pointing: the strongest cell pair lies on both key objects (a cell is on an object when it holds
  at least one of its pixels); ``top_k`` pointing is the share of the k strongest pairs that do;
- mass: the share of the correspondence's positive mass (above its median, as first-order
  pointing) that falls on key-object cells of both images, each cell weighted by the share of
  its pixels on the object;
- second-order insertion and deletion: the cells of each image are ranked by their first
  appearance in the cell pairs sorted by decreasing C; at step t the first ``round(t n)`` cells of
  both images are inserted into (or deleted from) a substrate, both perturbed images are embedded
  and their similarity is the curve's value (2 S forward passes per pair). Curves are min-max
  normalised and integrated as the first-order ones. The substrate must carry no evidence of a
  match: one constant for both images does (two blank images are identical: similarity 1, the
  curve's maximum, at the empty end), so the default substrate of each image is an unrelated
  image (``unrelated_substrates``: another pair's query for a query, another pair's reference
  for a reference), which puts the empty pair at the similarity of an unrelated pair.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from simexplain_jax import checks, engine
from simexplain_jax.engine import EmbedFn
from simexplain_jax.metrics.causal import check_background, minmax_normalize, trapezoid_auc
from simexplain_jax.similarity import SimilarityFn, cosine


class CorrespondencePointing(NamedTuple):
    hit: bool  # the strongest cell pair lies on both key objects
    top_k: float  # share of the k strongest cell pairs on both key objects
    mass: float  # share of the positive mass (above the median) on both key objects


def cell_of(size: int, cells: int) -> np.ndarray:
    """``[size]``: the cell index of each pixel row (or column)."""
    return (np.arange(size) * cells) // size


def cell_cover(key_mask: ArrayLike, grid: tuple[int, int]) -> np.ndarray:
    """``[h, w]``: the share of each cell's pixels on ``key_mask [H, W]``."""
    mask = np.asarray(key_mask, bool)
    rows, cols = cell_of(mask.shape[0], grid[0]), cell_of(mask.shape[1], grid[1])
    total = np.zeros(grid)
    hits = np.zeros(grid)
    np.add.at(total, (rows[:, None], cols[None, :]), 1.0)
    np.add.at(hits, (rows[:, None], cols[None, :]), mask.astype(np.float64))
    return hits / total


def correspondence_pointing(correspondence: ArrayLike, query_key: ArrayLike, reference_key: ArrayLike,
                            k: int = 3) -> CorrespondencePointing:
    """Pointing and mass of one correspondence against the key objects of both images.

    Args:
      correspondence: ``[hq, wq, hr, wr]``, finite.
      query_key: ``[H, W]`` bool mask of the query's key object.
      reference_key: ``[H', W']`` bool mask of the reference's key object.
      k: how many of the strongest cell pairs ``top_k`` looks at.

    Returns:
      :class:`CorrespondencePointing`.
    """
    corr = np.asarray(correspondence, np.float64)
    if corr.ndim != 4:
        raise ValueError(f"correspondence must be [hq, wq, hr, wr], got shape {corr.shape}")
    if not np.isfinite(corr).all():
        raise ValueError("correspondence contains NaN or infinite values")
    k = checks.check_positive_int(k, "k")
    cover_q, cover_r = cell_cover(query_key, corr.shape[:2]), cell_cover(reference_key, corr.shape[2:])
    if not cover_q.any() or not cover_r.any():
        raise ValueError("query_key and reference_key must each hold at least one pixel")
    on_both = (cover_q > 0)[:, :, None, None] & (cover_r > 0)[None, None]
    flat = corr.reshape(-1)
    order = np.argsort(-flat, kind="stable")
    top = flat == flat.max()
    hit = bool(on_both.reshape(-1)[top].mean() > 0.5)  # ties: most of the maximal pairs
    top_k = float(on_both.reshape(-1)[order[:k]].mean())
    positive = np.maximum(corr - np.median(corr), 0.0)
    total = positive.sum()
    weight = cover_q[:, :, None, None] * cover_r[None, None]
    mass = float((positive * weight).sum() / total) if total > 0 else 0.0
    return CorrespondencePointing(hit, top_k, mass)


def cell_order(correspondence: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rank of each query cell ``[hq * wq]`` and reference cell ``[hr * wr]``: the order of first
    appearance among the cell pairs sorted by decreasing contribution (ties by index)."""
    nq = correspondence.shape[0] * correspondence.shape[1]
    nr = correspondence.shape[2] * correspondence.shape[3]
    flat = correspondence.reshape(nq * nr)
    pair_rank = jnp.zeros(nq * nr, jnp.int32).at[jnp.argsort(-flat, stable=True)].set(
        jnp.arange(nq * nr, dtype=jnp.int32)).reshape(nq, nr)
    first_q = pair_rank.min(axis=1)  # the best rank of any pair holding the cell
    first_r = pair_rank.min(axis=0)
    rank_q = jnp.zeros(nq, jnp.int32).at[jnp.argsort(first_q, stable=True)].set(jnp.arange(nq, dtype=jnp.int32))
    rank_r = jnp.zeros(nr, jnp.int32).at[jnp.argsort(first_r, stable=True)].set(jnp.arange(nr, dtype=jnp.int32))
    return rank_q, rank_r


def _cell_counts(num_cells: int, num_steps: int) -> jax.Array:
    return jnp.asarray(np.round(num_cells * np.linspace(0.0, 1.0, num_steps)).astype(np.int32))


def _pixel_ranks(rank: jax.Array, grid: tuple[int, int], shape: tuple[int, int]) -> jax.Array:
    rows, cols = cell_of(shape[0], grid[0]), cell_of(shape[1], grid[1])
    return rank.reshape(grid)[jnp.asarray(rows)[:, None], jnp.asarray(cols)[None, :]]


def unrelated_substrates(queries: ArrayLike, references: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair substrates for the second-order curves: pair i's query is filled from the query of
    pair ``i + 1`` and its reference from the reference of pair ``i + P // 2`` (cyclically; P >= 2
    pairs, so no pair gets its own images, nor two images of one other pair when P >= 3)."""
    queries, references = np.asarray(queries), np.asarray(references)
    count = len(queries)
    if count < 2:
        raise ValueError("unrelated substrates need at least 2 pairs (each image is filled from another pair's)")
    shift = max(count // 2, 2) if count >= 3 else 1
    return np.roll(queries, -1, axis=0), np.roll(references, -shift, axis=0)


@functools.partial(jax.jit, static_argnames=("num_steps", "batch_size", "similarity", "compute_dtype"))
def _second_order_curves(embed_fn, queries, references, correspondences, substrate_q, substrate_r, *, num_steps,
                         batch_size, similarity, compute_dtype):
    embed_fn = engine.in_compute_dtype(embed_fn, compute_dtype)
    grid_q, grid_r = correspondences.shape[1:3], correspondences.shape[3:5]
    counts_q = _cell_counts(grid_q[0] * grid_q[1], num_steps)
    counts_r = _cell_counts(grid_r[0] * grid_r[1], num_steps)

    def one(args):
        query, reference, corr, base_q, base_r = args
        rank_q, rank_r = cell_order(corr)
        pix_q = _pixel_ranks(rank_q, grid_q, query.shape[:2])
        pix_r = _pixel_ranks(rank_r, grid_r, reference.shape[:2])
        keep_q = (pix_q[None] < counts_q[:, None, None])[..., None]  # [S, H, W, 1]
        keep_r = (pix_r[None] < counts_r[:, None, None])[..., None]
        images_q = jnp.concatenate([jnp.where(keep_q, query, base_q), jnp.where(keep_q, base_q, query)])
        images_r = jnp.concatenate([jnp.where(keep_r, reference, base_r), jnp.where(keep_r, base_r, reference)])
        emb_q = engine.embed_in_chunks(embed_fn, images_q, batch_size)
        emb_r = engine.embed_in_chunks(embed_fn, images_r, batch_size)
        return similarity(emb_q, emb_r).astype(jnp.float32).reshape(2, num_steps)

    curves = jax.lax.map(one, (queries, references, correspondences, substrate_q, substrate_r))  # [P, 2, S]
    return curves, trapezoid_auc(minmax_normalize(curves))


class SecondOrderInsertionDeletion(NamedTuple):
    insertion_auc: np.ndarray  # [P], higher is better
    deletion_auc: np.ndarray  # [P], lower is better
    insertion_curve: np.ndarray  # [P, S], before normalisation
    deletion_curve: np.ndarray  # [P, S]


def second_order_insertion_deletion(embed_fn: EmbedFn, queries: ArrayLike, references: ArrayLike,
                                    correspondences: ArrayLike, *, background: Optional[ArrayLike] = None,
                                    reference_background: Optional[ArrayLike] = None, num_steps: int = 33,
                                    batch_size: int = 66, similarity: SimilarityFn = cosine,
                                    compute_dtype: str = "float32") -> SecondOrderInsertionDeletion:
    """Second-order insertion and deletion of P pairs (module docstring).

    Args:
      embed_fn: pure ``images [B, H, W, C] -> [B, D]``.
      queries: ``[P, H, W, C]`` float images.
      references: ``[P, H, W, C]``, one per query.
      correspondences: ``[P, hq, wq, hr, wr]``, finite.
      background: the queries' substrate in the input space: a scalar, ``[C]``, ``[H, W, C]`` or one
        per pair ``[P, H, W, C]``. None (the default): unrelated images for both sides
        (``unrelated_substrates``; P >= 2).
      reference_background: the references' substrate, as ``background`` (default: the same as the
        queries').
      num_steps: S points of each curve, t = 0 .. 1.
      batch_size: perturbed images embedded per chunk.
      similarity: broadcasting similarity of the embeddings.
      compute_dtype: the embedding forward's dtype.

    Returns:
      :class:`SecondOrderInsertionDeletion` (AUCs in [0, 1]).
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    queries = checks.check_images(queries, "queries")
    references = checks.check_images(references, "references")
    corr = np.asarray(correspondences, np.float32)
    if references.shape != queries.shape or corr.ndim != 5 or corr.shape[0] != len(queries):
        raise ValueError(f"need queries and references [P, H, W, C] of one shape and correspondences "
                         f"[P, hq, wq, hr, wr]; got {queries.shape}, {references.shape}, {corr.shape}")
    checks.check_finite(corr, "correspondences")
    num_steps = checks.check_positive_int(num_steps, "num_steps", 2)
    if background is None:
        if reference_background is not None:
            raise ValueError("reference_background needs background (None: unrelated images for both sides)")
        substrate_q, substrate_r = unrelated_substrates(queries, references)
    else:
        substrate_q = _substrate(background, queries.shape, "background")
        substrate_r = _substrate(background if reference_background is None else reference_background,
                                 queries.shape, "reference_background")
    checks.check_similarity(similarity)
    curves, auc = _second_order_curves(embed_fn, jnp.asarray(queries), jnp.asarray(references), jnp.asarray(corr),
                                       jnp.asarray(substrate_q), jnp.asarray(substrate_r), num_steps=num_steps,
                                       batch_size=checks.check_batch_size(batch_size), similarity=similarity,
                                       compute_dtype=checks.check_compute_dtype(compute_dtype))
    curves, auc = np.asarray(curves), np.asarray(auc)
    bad = np.flatnonzero(~np.isfinite(curves).reshape(len(curves), -1).all(axis=1))
    if len(bad):
        raise ValueError(f"non-finite similarities on the second-order curves of pairs {bad[:10].tolist()}")
    return SecondOrderInsertionDeletion(auc[:, 0], auc[:, 1], curves[:, 0], curves[:, 1])


def _substrate(value, shape, name: str) -> np.ndarray:
    """``value`` as one substrate per pair ``[P, H, W, C]``: per pair already, or a constant broadcast."""
    value = np.asarray(value, np.float32)
    if value.ndim == 4:
        if value.shape != tuple(shape):
            raise ValueError(f"{name} of shape {value.shape} must be one image per pair {tuple(shape)}")
        checks.check_finite(value, name)
        return value
    try:
        constant = check_background(value, shape[1:])
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    return np.broadcast_to(constant, shape)
