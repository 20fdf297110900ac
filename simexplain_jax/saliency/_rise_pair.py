"""Black-box second-order RISE: which cells of the query match which cells of the reference
(docs/method.md, "RISE for pairs").

N RISE masks ``M_n`` on the query and N independent ones ``M'_m`` on the reference are embedded
once each (2N forward passes); every combination is scored, ``S_nm = s(f(q * M_n), f(r * M'_m))``,
so the 2N passes give N^2 joint samples. With ``A_nc`` the mean of mask n over cell c of the
``g x g`` grid and ``a_c`` its mean over the N masks, the correspondence is the cross estimator

    C_cd = sum_{n, m} (A_nc - a_c) S_nm (A'_md - a'_d) / N^2,

the covariance of the score with cell c of the query and cell d of the reference being kept.
Centring on the sample means (rather than on their expectation p) makes every column of
``A - a`` sum to zero, so a score term that depends on one image's mask alone adds exactly
nothing (``centering="p"`` keeps the expectation).
Its row sums are a first-order map of the query, its column sums one of the reference. S is
never held whole: it is formed a chunk of query masks at a time, so memory grows with
``batch_size x N``, not ``N^2``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from simexplain_jax import checks, engine
from simexplain_jax import masks as _masks
from simexplain_jax.engine import EmbedFn
from simexplain_jax.saliency._options import MethodOptions, SaliencyResult, options_class, resolve, result, set_field
from simexplain_jax.saliency._second_order import PairResult, first_order_maps
from simexplain_jax.similarity import SimilarityFn, cosine, pairwise

_HIGHEST = jax.lax.Precision.HIGHEST


def cell_pooling(size: int, cells: int) -> jax.Array:
    """``[size, cells]``: averages the pixels of each of ``cells`` equal bands (pixel y in band
    ``floor(y cells / size)``)."""
    band = (jnp.arange(size) * cells) // size
    onehot = (band[:, None] == jnp.arange(cells)[None, :]).astype(jnp.float32)
    return onehot / onehot.sum(axis=0, keepdims=True)


def _embed_masked(embed_fn, image, masks_for, num_masks, batch_size, pool_h, pool_w):
    """Embeddings ``[n, D]`` of ``image`` under masks ``0 .. n - 1``, the masks' cell means
    ``[n, g * g]`` and a validity flag ``[n]`` (0 for the padding rows beyond ``num_masks``)."""
    chunks = engine.num_chunks(num_masks, batch_size)

    def one(chunk):
        indices = chunk * batch_size + jnp.arange(batch_size, dtype=jnp.int32)
        valid = (indices < num_masks).astype(jnp.float32)
        masks = masks_for(jnp.minimum(indices, num_masks - 1))
        embeddings = embed_fn(image[None] * masks[..., None])
        cells = jnp.einsum("bhw,hc,wd->bcd", masks, pool_h, pool_w, precision=_HIGHEST)
        return embeddings, cells.reshape(batch_size, -1), valid

    embeddings, cells, valid = jax.lax.map(one, jnp.arange(chunks, dtype=jnp.int32))
    return (embeddings.reshape(chunks * batch_size, -1), cells.reshape(chunks * batch_size, -1),
            valid.reshape(-1))


CENTERINGS = ("mean", "p")


def _masked_side(embed_fn, image, key, *, num_masks, grid_size, p, batch_size, sampler, centering):
    """One image's side of the cross estimator: its masked embeddings ``[n, D]`` and its masks'
    centred cell means ``[n, g * g]`` (padding rows zero)."""
    masks_for = _masks.rise_mask_fn(image.shape, key=key, grid_size=grid_size, p=p, sampler=sampler)
    height, width = image.shape[:2]
    embeddings, cells, valid = _embed_masked(embed_fn, image, masks_for, num_masks, batch_size,
                                             cell_pooling(height, grid_size), cell_pooling(width, grid_size))
    # each cell's mean over the N masks ("mean": the sums of centred values are exactly 0) or p
    center = jnp.sum(cells * valid[:, None], axis=0) / num_masks if centering == "mean" else p
    return embeddings, (cells - center) * valid[:, None]


def rise_pair_core(embed_fn, query, references, key, *, num_masks, grid_size, p, batch_size, similarity,
                   sampler="iid", centering="mean", compute_dtype="float32"):
    """``C [K, g, g, g, g]`` of ``query`` with each of ``references [K, H, W, C]`` (traceable; ``p``
    may be traced). The query's masks (from ``fold_in(key, 0)``) are embedded once for all K; every
    reference's masks come from ``fold_in(key, 1)``, so a pair's correspondence does not depend on
    the other references."""
    embed_fn = engine.in_compute_dtype(embed_fn, compute_dtype)
    batch_size = max(1, min(int(batch_size), num_masks))
    side = dict(num_masks=num_masks, grid_size=grid_size, p=p, batch_size=batch_size, sampler=sampler,
                centering=centering)
    emb_q, centred_q = _masked_side(embed_fn, query, jax.random.fold_in(key, 0), **side)
    chunks = emb_q.shape[0] // batch_size
    cells = grid_size * grid_size

    def one_reference(reference):
        emb_r, centred_r = _masked_side(embed_fn, reference, jax.random.fold_in(key, 1), **side)

        def block(total, chunk):
            rows = jax.lax.dynamic_slice_in_dim(emb_q, chunk * batch_size, batch_size)
            scores = pairwise(similarity, rows, emb_r).astype(jnp.float32)  # [B, n]
            weighted = jnp.matmul(scores, centred_r, precision=_HIGHEST)  # [B, g^2]
            left = jax.lax.dynamic_slice_in_dim(centred_q, chunk * batch_size, batch_size)
            return total + jnp.matmul(left.T, weighted, precision=_HIGHEST), None

        total, _ = jax.lax.scan(block, jnp.zeros((cells, cells), jnp.float32), jnp.arange(chunks, dtype=jnp.int32))
        return (total / (num_masks * num_masks)).reshape(grid_size, grid_size, grid_size, grid_size)

    return jax.lax.map(one_reference, references)


def check_grid(image_shape, grid_size: int) -> None:
    """Each of the ``grid_size`` bands of the image holds at least one pixel."""
    if min(image_shape[:2]) < grid_size:
        raise ValueError(f"grid_size={grid_size} has more cells per side than the image has pixels "
                         f"({image_shape[0]} x {image_shape[1]})")


@options_class("rise_pair", references="images", traced=("p",), second_order=True)
class RisePair(MethodOptions):
    """Options of black-box second-order RISE (:func:`rise_pair`).

    Attributes:
      num_masks: N masks per image (2N forward passes per pair, N^2 joint samples).
      grid_size: the masks' grid s; the correspondence is over its ``s x s`` cells per image.
      p: the probability that a cell is kept (traced: a sweep over it compiles once).
      batch_size: masks embedded per chunk, and query masks scored against all N reference
        embeddings per step (memory grows with ``batch_size x N``).
      similarity: broadcasting ``[..., D] x [..., D] -> [...]``.
      sampler: how the masks are drawn (``sx.masks.SAMPLERS``).
      centering: what is subtracted from the masks' cell means: ``"mean"`` (each cell's mean over
        the N masks: the terms that depend on one image alone cancel exactly) or ``"p"`` (its
        expectation: they cancel only on average).
      compute_dtype: the embedding forward pass's dtype (``"float32"`` or ``"bfloat16"``).
    """

    num_masks: int = 1000
    grid_size: int = 8
    p: float = 0.5
    batch_size: int = 128
    similarity: SimilarityFn = cosine
    sampler: str = "iid"
    centering: str = "mean"
    compute_dtype: str = "float32"

    def __post_init__(self):
        num_masks, grid_size, p = _masks.check_rise_options(self.num_masks, self.grid_size, self.p)
        checks.check_similarity(self.similarity)
        if self.centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {self.centering!r}")
        for name, value in dict(num_masks=num_masks, grid_size=grid_size, p=p,
                                batch_size=checks.check_batch_size(self.batch_size),
                                sampler=_masks.check_sampler(self.sampler),
                                compute_dtype=checks.check_compute_dtype(self.compute_dtype)).items():
            set_field(self, name, value)

    def passes_per_pair(self, dim: int) -> int:
        """N masked queries and N masked references."""
        return 2 * self.num_masks

    def core(self, embed_fn, query, references, key) -> SaliencyResult:
        """``[K, H, W]`` query maps and ``[K, g, g, g, g]`` correspondences (traceable)."""
        corr = rise_pair_core(embed_fn, query, references, key, **_static(self))
        maps = jax.vmap(lambda c: first_order_maps(c, query.shape, references.shape[1:])[0])(corr)
        return result(maps, self.passes_per_pair(0), correspondence=corr)


def _static(options: RisePair) -> dict:
    return dict(num_masks=options.num_masks, grid_size=options.grid_size, p=options.p,
                batch_size=options.batch_size, similarity=options.similarity, sampler=options.sampler,
                centering=options.centering, compute_dtype=options.compute_dtype)


@jax.jit
def _rise_pair_jit(embed_fn, queries, references, keys, options):
    static = _static(options)

    def one(args):
        query, reference, key = args
        corr = rise_pair_core(embed_fn, query, reference[None], key, **static)[0]
        query_map, reference_map = first_order_maps(corr, query.shape, reference.shape)
        intact = embed_fn(jnp.stack([query, reference]))
        return corr, query_map, reference_map, options.similarity(intact[0], intact[1])

    return jax.lax.map(one, (queries, references, keys))


def rise_pair(embed_fn: EmbedFn, query: ArrayLike, reference: ArrayLike, *, key: jax.Array,
              options: Optional[RisePair] = None, **overrides) -> PairResult:
    """Black-box correspondence of a pair by the RISE cross estimator (module docstring).

    Args:
      embed_fn: pure ``images [B, H, W, C] -> [B, D]``.
      query: ``[H, W, C]``, or ``[P, H, W, C]`` for P pairs.
      reference: an image (or P images) of the same shape: the reference of each query.
      key: PRNG key for one pair; pair i of a batch uses ``fold_in(key, i)``. Within a pair the
        query's masks come from ``fold_in(., 0)``, the reference's from ``fold_in(., 1)``.
      options: a :class:`RisePair` (default ``RisePair()``).
      **overrides: options replacing those of ``options``, e.g. ``num_masks=500``.

    Returns:
      :class:`PairResult` (correspondence ``[s, s, s, s]``), with a leading P axis for a batch;
      ``passes`` = 2N.
    """
    embed_fn = checks.as_pytree_fn(embed_fn)
    options = resolve(RisePair, options, overrides)
    queries, single = checks.check_image_or_batch(query, "query")
    references, _ = checks.check_image_or_batch(reference, "reference")
    if references.shape[0] != queries.shape[0]:
        raise ValueError(f"reference must hold one image per query: {queries.shape[0]} queries, "
                         f"{references.shape[0]} references")
    if key is None:
        raise ValueError("rise_pair needs key= (the masks are drawn from it)")
    checks.check_key(key)
    check_grid(queries.shape[1:], options.grid_size)
    check_grid(references.shape[1:], options.grid_size)
    keys = key[None] if single else jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(queries.shape[0]))
    corr, query_map, reference_map, sim = _rise_pair_jit(embed_fn, queries, references, keys, options)
    if single:
        corr, query_map, reference_map, sim = corr[0], query_map[0], reference_map[0], sim[0]
    return PairResult(corr, query_map, reference_map, sim, options.passes_per_pair(0))
