"""Exact second-order explanations of pooled embeddings (docs/method.md, "Exact pooled correspondence").

A pooled model embeds an image as ``e(x) = normalise(s * (W mean_i F(x)_i + b))``: a feature map
``F(x) [h, w, c]`` averaged over its cells ``i``, an affine head ``(W [c, D], b [D])``, an
optional elementwise scale ``s [D]`` (the type-aware condition mask ``ReLU(m_c)``) and, usually,
L2 normalisation. Because the head is affine and the mean is linear,
``s * (W mean_i F_i + b) = mean_i v_i`` with the cell embeddings ``v_i = s * (W F_i + b)``, so the
cosine similarity of a query q and a reference r splits exactly over pairs of cells:

    cos(e_q, e_r) = sum_{i, j} C_ij,   C_ij = v^q_i . v^r_j / (n_q n_r |u_q| |u_r|),

with ``u = mean_i v_i`` the pooled embedding before normalisation and ``n`` the number of cells.
Normalisation and bias are inside the sum: nothing is left over. ``C`` is the correspondence
(cells of the query x cells of the reference); its row sums are a first-order map of the query
and its column sums one of the reference, each from one forward pass per image.

References:
  Stylianou, Souvenir and Pless, "Visualizing Deep Similarity Networks", WACV 2019.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct
from jax.tree_util import Partial
from jax.typing import ArrayLike

from simexplain_jax import checks
from simexplain_jax.checks import call_pytree
from simexplain_jax.models.embedding import EmbeddingNet, TypeAwareEmbedding
from simexplain_jax.saliency._options import MethodOptions, SaliencyResult, options_class, resolve, result
from simexplain_jax.saliency._second_order import PairResult, first_order_maps
from simexplain_jax.similarity import SimilarityFn, cosine, dot, l2_normalize

_HIGHEST = jax.lax.Precision.HIGHEST


@struct.dataclass
class PooledModel:
    """A model whose embedding is an affine head on the mean of a feature map (a pytree).

    Attributes:
      features_fn: pure ``images [B, H, W, C] -> feature maps [B, h, w, c]`` (a
        ``jax.tree_util.Partial`` carrying its parameters); a token model reshapes its tokens to
        their patch grid.
      weight: the head's ``[c, D]`` matrix.
      bias: the head's ``[D]`` bias.
      scale: ``[D]`` elementwise factor applied after the head (a type-aware condition mask), or
        None.
      normalize: whether the embedding is L2-normalised (static).
    """

    features_fn: Partial
    weight: jax.Array
    bias: jax.Array
    scale: Optional[jax.Array] = None
    normalize: bool = struct.field(pytree_node=False, default=True)

    def __call__(self, images: jax.Array) -> jax.Array:
        """The embeddings ``[B, D]``: a PooledModel is itself an ``embed_fn`` (the one
        ``explain_pairs`` takes for ``pooled_pair``)."""
        pooled = jnp.mean(cell_embeddings(self, images), axis=(1, 2))
        return l2_normalize(pooled) if self.normalize else pooled


@dataclasses.dataclass(frozen=True)
class _Features:
    """``(variables, images) -> backbone feature maps`` of an EmbeddingNet or TypeAwareEmbedding;
    hashable by the model's value, so equal models share compiled programs."""

    model: nn.Module

    def __call__(self, variables, images):
        return self.model.apply(variables, images, method=lambda module, x: module.backbone(x, train=False))


def pooled_model(model: nn.Module, variables, condition: Optional[int] = None) -> PooledModel:
    """The :class:`PooledModel` of one of the library's Flax embedding models.

    Args:
      model: an ``EmbeddingNet`` or a ``TypeAwareEmbedding``.
      variables: its variables (``params`` and, for batch norm, ``batch_stats``).
      condition: the type-pair condition of a ``TypeAwareEmbedding`` (required there, refused
        otherwise).

    Returns:
      The model as features, head and scale.

    Raises:
      TypeError: for any other model, naming what the exact decomposition needs.
    """
    params = variables["params"]
    if isinstance(model, EmbeddingNet):
        if condition is not None:
            raise ValueError("condition is only for a TypeAwareEmbedding")
        head = params["head"]
        return PooledModel(Partial(_Features(model), variables), head["kernel"], head["bias"], None,
                           bool(model.normalize))
    if isinstance(model, TypeAwareEmbedding):
        if condition is None:
            raise ValueError("a TypeAwareEmbedding needs condition= (the type-pair condition to explain)")
        scale = jax.nn.relu(params["masks"][condition])
        return PooledModel(Partial(_Features(model), variables), params["head"]["kernel"], params["head"]["bias"],
                           scale, True)
    raise TypeError(
        f"the exact pooled decomposition needs a model whose embedding is an affine head on the mean of a feature "
        f"map (EmbeddingNet, TypeAwareEmbedding with a condition); got {type(model).__name__}. For your own model, "
        "build sx.saliency.PooledModel(features_fn, weight, bias, scale, normalize), or use a black-box method")


def cell_embeddings(pooled: PooledModel, images: jax.Array) -> jax.Array:
    """``images [B, H, W, C] -> [B, h, w, D]``: each cell's feature through the head (and scale)."""
    features = pooled.features_fn(images)
    if features.ndim != 4:
        raise ValueError(f"features_fn must return feature maps [B, h, w, c], got shape {features.shape}")
    if features.shape[-1] != pooled.weight.shape[0]:
        raise ValueError(f"features_fn gives {features.shape[-1]} channels but the head's weight is "
                         f"{tuple(pooled.weight.shape)} ([c, D])")
    cells = jnp.einsum("bhwc,cd->bhwd", features.astype(jnp.float32), pooled.weight.astype(jnp.float32),
                       precision=_HIGHEST) + pooled.bias.astype(jnp.float32)
    return cells if pooled.scale is None else cells * pooled.scale.astype(jnp.float32)


def correspondence(query_cells: jax.Array, reference_cells: jax.Array, normalize: bool = True) -> jax.Array:
    """The exact split ``C [hq, wq, hr, wr]`` of one pair's similarity (module docstring).

    Args:
      query_cells: ``[hq, wq, D]`` cell embeddings of the query.
      reference_cells: ``[hr, wr, D]`` cell embeddings of the reference.
      normalize: the embeddings are L2-normalised (the similarity is their cosine); False: the
        similarity is the dot product of the pooled embeddings.

    Returns:
      ``C`` with ``C.sum()`` equal to the similarity; all zeros when either pooled embedding is zero.
    """
    nq = query_cells.shape[0] * query_cells.shape[1]
    nr = reference_cells.shape[0] * reference_cells.shape[1]
    products = jnp.einsum("abd,ced->abce", query_cells, reference_cells, precision=_HIGHEST) / (nq * nr)
    if not normalize:
        return products
    norm_q = jnp.linalg.norm(jnp.mean(query_cells, axis=(0, 1)))
    norm_r = jnp.linalg.norm(jnp.mean(reference_cells, axis=(0, 1)))
    denominator = norm_q * norm_r
    return jnp.where(denominator > 0, products / jnp.where(denominator > 0, denominator, 1.0), 0.0)


@jax.jit
def _pooled_pairs(pooled, queries, references):
    q_cells = cell_embeddings(pooled, queries)
    r_cells = cell_embeddings(pooled, references)
    corr = jax.vmap(lambda q, r: correspondence(q, r, pooled.normalize))(q_cells, r_cells)
    query_map, reference_map = jax.vmap(lambda c: first_order_maps(c, queries.shape[1:], references.shape[1:]))(corr)
    return corr, query_map, reference_map, corr.sum(axis=(1, 2, 3, 4))


def as_pooled(embed_fn) -> PooledModel:
    """The :class:`PooledModel` that ``embed_fn`` (as ``checks.as_pytree_fn`` wraps it) carries, or a
    TypeError saying what ``pooled_pair`` needs."""
    if isinstance(embed_fn, Partial) and embed_fn.func is call_pytree and isinstance(embed_fn.args[0], PooledModel):
        return embed_fn.args[0]
    raise TypeError("pooled_pair needs the model as a PooledModel: pass embed_fn=sx.saliency.pooled_model(model, "
                    "variables) (or your own sx.saliency.PooledModel) to explain_pairs; a black-box embed_fn can "
                    "be explained with rise_pair")


@options_class("pooled_pair", references="images", queries_per_device=16, second_order=True)
class PooledPair(MethodOptions):
    """Options of the exact pooled correspondence (:func:`pooled_pair`).

    Attributes:
      similarity: ``sx.similarity.cosine`` or ``sx.similarity.dot`` (the decomposition is exact for
        these two only).
      compute_dtype: ``"float32"`` only: the split is exact in float32.
    """

    similarity: SimilarityFn = cosine
    compute_dtype: str = "float32"

    def __post_init__(self):
        if self.similarity is not cosine and self.similarity is not dot:
            raise ValueError("the exact pooled decomposition is defined for similarity=cosine or dot, "
                             f"got {getattr(self.similarity, '__name__', self.similarity)!r}")
        if self.compute_dtype != "float32":
            raise ValueError(f"pooled_pair computes in float32 (its split is exact), got compute_dtype="
                             f"{self.compute_dtype!r}")

    def passes_per_pair(self, dim: int) -> int:
        """One forward pass per image."""
        return 2

    def core(self, embed_fn, query, references, key) -> SaliencyResult:
        """``[K, H, W]`` query maps and ``[K, h, w, h, w]`` correspondences of ``query`` with each of
        ``references [K, H, W, C]``; ``embed_fn`` carries a PooledModel (traceable)."""
        pooled = as_pooled(embed_fn)
        pooled = pooled.replace(normalize=pooled.normalize or self.similarity is cosine)
        q_cells = cell_embeddings(pooled, query[None])[0]
        r_cells = cell_embeddings(pooled, references)
        corr = jax.vmap(lambda r: correspondence(q_cells, r, pooled.normalize))(r_cells)
        maps = jax.vmap(lambda c: first_order_maps(c, query.shape, references.shape[1:])[0])(corr)
        return result(maps, 2, correspondence=corr)


def pooled_pair(model, variables, queries: ArrayLike, references: ArrayLike, *, condition: Optional[int] = None,
                options: Optional[PooledPair] = None, **overrides) -> PairResult:
    """Exact correspondence of pooled-embedding pairs: one forward pass per image.

    Args:
      model: an ``EmbeddingNet`` or ``TypeAwareEmbedding`` (with ``variables``), or a
        :class:`PooledModel` (then ``variables`` must be None).
      variables: the Flax model's variables.
      queries: ``[H, W, C]`` or ``[P, H, W, C]`` float images in the model's input space.
      references: images of the queries' shape (one per query).
      condition: the type-pair condition of a ``TypeAwareEmbedding``.
      options: a :class:`PooledPair` (default ``PooledPair()``).
      **overrides: options replacing those of ``options``, e.g. ``similarity=sx.similarity.dot``.

    Returns:
      :class:`PairResult` with a leading P axis (none for a single pair), ``passes`` = 2 (one per image).
    """
    options = resolve(PooledPair, options, overrides)
    if isinstance(model, PooledModel):
        if variables is not None or condition is not None:
            raise ValueError("a PooledModel carries its parameters: pass variables=None and no condition")
        pooled = model
    else:
        pooled = pooled_model(model, variables, condition)
    pooled = pooled.replace(normalize=pooled.normalize or options.similarity is cosine)
    queries, single = checks.check_image_or_batch(queries, "queries")
    references, _ = checks.check_image_or_batch(references, "references")
    if references.shape[0] != queries.shape[0]:
        raise ValueError(f"references must hold one image per query: {queries.shape[0]} queries, "
                         f"{references.shape[0]} references")
    corr, query_map, reference_map, sim = _pooled_pairs(pooled, queries, references)
    if single:
        corr, query_map, reference_map, sim = corr[0], query_map[0], reference_map[0], sim[0]
    return PairResult(corr, query_map, reference_map, sim, 2)
