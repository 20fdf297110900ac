"""Explaining many pairs at once: one code path for every method and any mesh.

``explain_pairs(options, embed_fn, queries, references, key=..., pairs=[[q, r], ...])`` returns one
``[H, W]`` map per pair, in the order of ``pairs``. ``options`` is a method's options object
(``sx.saliency.Rise(num_masks=500)``), or a method name with ``config`` (a dict of its options).

The pairs are grouped by query so that work shared by a query's references is done once (the
masked-query embeddings of RISE, the occluded queries, LIME's samples and factorisation); a
query's K references are padded to a power of two so that a few compiled programs serve any
grouping. Stacks of queries are vmapped and split over the devices of a mesh
(``parallel.map_queries``; one local device when no mesh is given), and the compiled programs are
cached, so the single-pair functions, the unsharded call and the sharded call run the same core.
The work is three jobs: checking the arguments (here), the per-query cache (``_pair_cache``) and
running the steps (``_dispatch``).

Randomness: the query with index i in ``queries`` uses ``fold_in(key, i)``, so a pair's map is what
the single-pair function gives with that key for the query's references (as a ``[K, ...]``
stack), whatever else is in the list. When the arrays hold a subset of a dataset (one process's
shard), ``query_ids`` / ``reference_ids`` give each row's index in the whole dataset: keys and cache
files use those, so the maps equal a run over the whole dataset.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from typing import Callable, NamedTuple, Optional, Union

import jax
import numpy as np
from jax.sharding import Mesh
from jax.typing import ArrayLike

from simexplain_jax import checks, engine, parallel
from simexplain_jax.engine import EmbedFn
from simexplain_jax.saliency import _dispatch
from simexplain_jax.saliency._options import MethodOptions
from simexplain_jax.saliency._pair_cache import PairCache
from simexplain_jax.saliency._second_order import PairResult, first_order_maps
from simexplain_jax.saliency.registry import SECOND_ORDER, as_options


def _ids(ids, count: int, name: str) -> np.ndarray:
    if ids is None:
        return np.arange(count)
    ids = np.asarray(ids)
    if ids.shape != (count,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must be {count} integer ids (one per row), got {ids.dtype} {ids.shape}")
    return ids


def _check_pairs(pairs, num_queries: int, num_references: int) -> np.ndarray:
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.shape[0] == 0:
        raise ValueError(f"pairs must be a non-empty [P, 2] array of (query, reference) indices, got {pairs.shape}")
    if not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"pairs must hold integer indices, got dtype {pairs.dtype}")
    if pairs[:, 0].min() < 0 or pairs[:, 0].max() >= num_queries or pairs[:, 1].min() < 0 or \
            pairs[:, 1].max() >= num_references:
        raise ValueError(f"pairs index outside queries ({num_queries}) / references ({num_references})")
    return pairs.astype(np.int64)


class _Request(NamedTuple):
    """``explain_pairs``' arguments, checked."""

    embed_fn: jax.tree_util.Partial
    queries: np.ndarray
    references: np.ndarray
    pairs: np.ndarray
    query_ids: np.ndarray
    reference_ids: np.ndarray
    mesh: Mesh
    query_batch: Optional[int]
    threads: int


def _check(embed_fn, queries, references, key, pairs, mesh, query_batch, query_ids, reference_ids,
           segment_threads) -> _Request:
    threads = min(8, os.cpu_count() or 1) if segment_threads is None else \
        checks.check_positive_int(segment_threads, "segment_threads", 0)
    embed_fn = checks.as_pytree_fn(embed_fn)
    queries = checks.check_images(queries, "queries")
    references = checks.check_images(references, "references")
    if queries.shape[1:] != references.shape[1:]:
        raise ValueError(f"queries and references must be images of one shape, got {queries.shape[1:]} and "
                         f"{references.shape[1:]}")
    pairs = _check_pairs(pairs, len(queries), len(references))
    if key is None:
        raise ValueError("explain_pairs needs key=")
    checks.check_key(key)
    query_ids = _ids(query_ids, len(queries), "query_ids")
    reference_ids = _ids(reference_ids, len(references), "reference_ids")
    mesh = parallel.make_mesh(1, local=True) if mesh is None else mesh
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (sx.parallel.make_mesh) or None, got {type(mesh).__name__}")
    if query_batch is not None:
        query_batch = checks.check_positive_int(query_batch, "query_batch")
    return _Request(embed_fn, queries, references, pairs, query_ids, reference_ids, mesh, query_batch, threads)


def explain_pairs(method: Union[str, MethodOptions], embed_fn: EmbedFn, queries: ArrayLike, references: ArrayLike,
                  *, key: jax.Array,
                  pairs: ArrayLike, config: Optional[dict] = None,
                  progress: Optional[Callable[[int], None]] = None, cache_dir: Optional[str] = None,
                  mesh: Optional[Mesh] = None, query_batch: Optional[int] = None,
                  query_ids: Optional[ArrayLike] = None, reference_ids: Optional[ArrayLike] = None,
                  cache_meta: Optional[dict] = None, replace_stale: bool = False,
                  segment_threads: Optional[int] = None,
                  correspondences: bool = False) -> Union[np.ndarray, PairResult]:
    """Maps ``[P, H, W]`` for ``pairs [P, 2]`` of (index into ``queries``, index into ``references``).

    Args:
      method: an options object (``sx.saliency.Rise(...)``: it says which method), or a method
        name (one of ``METHODS``) whose options ``config`` gives.
      embed_fn: pure ``images [B, H, W, C] -> [B, D]``.
      queries, references: float images ``[N, H, W, C]`` in the model's input space.
      key: PRNG key; the query with id i uses ``fold_in(key, i)``.
      pairs: ``[P, 2]`` integer indices.
      config: a dict of the method's options (e.g. ``{"num_masks": 2000}``), replacing the
        defaults (or those of an options object); unknown names raise.
      progress: called with the number of pairs finished after each step (e.g. ``tqdm(total=P).update``).
      cache_dir: maps are stored per query (``SaliencyCache``) and reused on a rerun. The cache
        records the method and all its options, the key, a fingerprint of ``embed_fn``'s
        parameters (``cache.fingerprint``) and a digest of every image: a rerun with anything else
        raises, naming what differs. A rerun with some queries missing recomputes only the steps
        that hold them, each exactly as an uninterrupted run would (same maps, bit for bit).
      mesh: a ``jax.sharding.Mesh`` (``sx.parallel.make_mesh``): every method spreads the queries
        over all its devices; on a 2-D ``("pairs", "masks")`` mesh RISE (fixed and variable)
        spreads queries over ``"pairs"`` and divides each query's masks over ``"masks"``. None: one
        local device. The maps do not depend on the mesh (to float rounding).
      query_batch: queries vmapped together per device (default: 1 for the chunked methods, 16
        for the mask method, gradient and random).
      query_ids, reference_ids: each row's index in the whole dataset (default: the row index),
        used for the random keys and the cache.
      cache_meta: more to record in (and check against) the cache's ``meta.json``, e.g. the dataset
        and split the ids index, so a cache is never reused for other images; a ``"model"`` entry
        replaces the fingerprint computed from ``embed_fn`` (pass one computed once when
        explaining many lists with one model).
      replace_stale: a cache written with other settings is moved aside and a fresh one started
        (default: raise). Maps are checked to be finite: an ``embed_fn`` giving NaN raises,
        naming the queries (or references), and nothing non-finite is cached.
      segment_threads: LIME only: host threads computing the queries' SLIC superpixels ahead of the
        device work, overlapped with it (default: ``min(8, os.cpu_count())``); 0 segments each query
        in the calling thread when its turn comes. The maps do not depend on it.

      correspondences: the pair methods (``SECOND_ORDER``: ``pooled_pair``, ``rise_pair``,
        ``integrated_cross_jacobian``) only: return each pair's whole second-order explanation
        instead of its query map. Their maps (and correspondences) are cached, meshed and keyed as
        every method's. ``pooled_pair`` takes ``embed_fn=sx.saliency.pooled_model(model,
        variables)`` (a ``PooledModel`` is an embed_fn); ``integrated_cross_jacobian`` integrates
        from the zero baseline here.

    Returns:
      ``[P, H, W]`` float32 maps (numpy), one per pair: a batch API returns the maps only (the
      single-pair functions return a ``SaliencyResult`` with the passes spent). For a pair method
      the map is the query's first-order map (the correspondence's row sums). With
      ``correspondences=True``: a ``PairResult`` of numpy arrays with a leading P axis
      (``correspondence [P, hq, wq, hr, wr]``, ``query_map``, ``reference_map``, ``similarity``)
      and ``passes`` per pair. The options' ``compute_dtype`` also sets the dtype in which the
      reference embeddings are computed here, so that query and reference go through the same
      forward pass.
    """
    options = as_options(method, config)
    if correspondences and not options.second_order:
        raise ValueError(f"correspondences=True needs a pair method (one of {SECOND_ORDER}); {options.method} "
                         "gives first-order maps only")
    r = _check(embed_fn, queries, references, key, pairs, mesh, query_batch, query_ids, reference_ids,
               segment_threads)
    groups: "OrderedDict[int, np.ndarray]" = OrderedDict()
    for q in dict.fromkeys(r.pairs[:, 0].tolist()):
        groups[q] = np.flatnonzero(r.pairs[:, 0] == q)
    cache = None
    if cache_dir:
        cache = PairCache(cache_dir, options, key, r.embed_fn, r.queries, r.references, r.pairs, groups, r.query_ids,
                          r.reference_ids, extra_meta=cache_meta, replace_stale=replace_stale)
    out = np.zeros((len(r.pairs), *r.queries.shape[1:3]), np.float32)
    corr = {}  # pair position -> correspondence (pair methods)
    todo = set()
    for q, positions in groups.items():
        cached = cache.get(q) if cache else None
        if cached is None:
            todo.add(q)
            continue
        out[positions] = cached[0]
        if cached[1] is not None:
            corr.update(zip(positions.tolist(), cached[1]))
        if progress:
            progress(len(positions))

    def done(q, maps, correspondence):
        out[groups[q]] = maps
        if correspondence is not None:
            corr.update(zip(groups[q].tolist(), correspondence))
        if cache:
            cache.put(q, out[groups[q]], correspondence)

    if todo:
        _dispatch.run(options, r.embed_fn, r.queries, r.references, key, r.pairs, groups, todo, mesh=r.mesh,
                      query_batch=r.query_batch, query_ids=r.query_ids, reference_ids=r.reference_ids,
                      threads=r.threads, done=done, progress=progress)
    if not correspondences:
        return out
    return _pair_result(options, r, out, np.stack([corr[i] for i in range(len(r.pairs))]))


def _pair_result(options: MethodOptions, r: _Request, query_maps: np.ndarray, corr: np.ndarray) -> PairResult:
    """The pair list's ``PairResult``: the reference maps from the correspondences' column sums, the
    similarities from one forward pass per image used."""
    forward = engine.in_compute_dtype(r.embed_fn, getattr(options, "compute_dtype", "float32"))
    used_q, used_r = np.unique(r.pairs[:, 0]), np.unique(r.pairs[:, 1])
    emb_q = dict(zip(used_q.tolist(), engine.apply_in_chunks(forward, r.queries[used_q], 128)))
    emb_r = dict(zip(used_r.tolist(), engine.apply_in_chunks(forward, r.references[used_r], 128)))
    similarity = np.asarray(options.similarity(np.stack([emb_q[q] for q in r.pairs[:, 0].tolist()]),
                                               np.stack([emb_r[i] for i in r.pairs[:, 1].tolist()])), np.float32)
    reference_maps = np.asarray(_reference_maps(jax.numpy.asarray(corr), r.references.shape[1:]))
    dim = next(iter(emb_q.values())).shape[-1]
    return PairResult(corr, query_maps, reference_maps, similarity, options.passes_per_pair(dim))


@functools.partial(jax.jit, static_argnums=1)
def _reference_maps(corr, shape):
    return jax.vmap(lambda c: first_order_maps(c, shape, shape)[1])(corr)
