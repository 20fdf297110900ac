"""Explaining many pairs at once: one registry of method cores, one path, any mesh.

``explain_pairs(method, embed_fn, queries, references, key=..., pairs=[[q, r], ...], config={...})``
returns one ``[H, W]`` map per pair, in the order of ``pairs``.

Every method is a pure core ``core(embed_fn, query, references [K, ...], key, ...) -> [K, H, W]``
(``METHOD_CORES`` names them, with their defaults and whether they can split a query's masks over
a mesh axis). The pairs are grouped by query so that work shared by a query's references is done
once (the masked-query embeddings of RISE, the occluded queries, LIME's samples and factorisation);
a query's K references are padded to a power of two so that a few compiled programs serve any
grouping. Stacks of queries are vmapped and split over the devices of a mesh
(``parallel.map_queries``; one local device when no mesh is given), and the compiled programs are
cached, so the single-pair functions, the unsharded call and the sharded call run the same core.

Randomness: the query with index i in ``queries`` uses ``fold_in(key, i)``, so a pair's map is what
the single-pair function gives with that key for the query's references (as a ``[K, ...]``
stack), whatever else is in the list. When the arrays hold a subset of a dataset (one process's
shard), ``query_ids`` / ``reference_ids`` give each row's index in the whole dataset: keys and cache
files use those, so the maps equal a run over the whole dataset.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import os
from collections import OrderedDict
from typing import Callable, Iterator, Optional

import jax
import numpy as np
from jax.sharding import Mesh
from jax.typing import ArrayLike

from simexplain_jax import checks, engine, parallel
from simexplain_jax.engine import EmbedFn
from simexplain_jax.saliency import _gradients, _lime, _occlusion, _perturbation, _random, _rise
from simexplain_jax.saliency.cache import SaliencyCache, fingerprint, image_digests
from simexplain_jax.saliency.cache import key_description as cache_key


@dataclasses.dataclass(frozen=True)
class MethodCore:
    """A saliency method as ``explain_pairs`` runs it."""

    core: Callable  # (embed_fn, query [H, W, C], references [K, ...], key, *extra, **static) -> [K, H, W]
    defaults: dict  # the options and their defaults (the single-pair function's keyword defaults)
    options: Callable[..., dict]  # checks the options, returns the core's static arguments
    references: str  # "embeddings" ([K, D]) or "images" ([K, H, W, C]: variable reference)
    split_masks: bool = False  # can divide a query's masks over the mesh's "masks" axis
    segments: bool = False  # takes per-query superpixels (LIME)
    queries_per_device: int = 1  # queries vmapped together on one device


METHOD_CORES = {
    "rise": MethodCore(_rise.rise_core, _rise.DEFAULTS, _rise.options, "embeddings", split_masks=True),
    "rise_variable": MethodCore(_rise.rise_variable_core, _rise.VARIABLE_DEFAULTS, _rise.variable_options, "images",
                                split_masks=True),
    "sliding_window": MethodCore(_occlusion.sliding_window_core, _occlusion.DEFAULTS, _occlusion.options,
                                 "embeddings"),
    "sliding_window_variable": MethodCore(_occlusion.sliding_window_variable_core, _occlusion.VARIABLE_DEFAULTS,
                                          _occlusion.variable_options, "images"),
    "lime": MethodCore(_lime.lime_core, _lime.DEFAULTS, _lime.options, "embeddings", segments=True),
    "lime_variable": MethodCore(_lime.lime_variable_core, _lime.VARIABLE_DEFAULTS, _lime.variable_options, "images",
                                segments=True),
    "perturbation": MethodCore(_perturbation.perturbation_core, _perturbation.DEFAULTS, _perturbation.options,
                               "embeddings", queries_per_device=16),
    "perturbation_variable": MethodCore(_perturbation.perturbation_variable_core, _perturbation.DEFAULTS,
                                        _perturbation.options, "images", queries_per_device=16),
    "gradient": MethodCore(_gradients.gradient_core, _gradients.DEFAULTS, _gradients.options, "embeddings",
                           queries_per_device=16),
    "integrated_gradients": MethodCore(_gradients.integrated_gradients_core, _gradients.INTEGRATED_DEFAULTS,
                                       _gradients.integrated_options, "embeddings"),
    "random": MethodCore(_random.random_core, _random.DEFAULTS, _random.options, "embeddings",
                         queries_per_device=16),
}
METHODS = tuple(METHOD_CORES)


@jax.jit
def _query_keys(key, ids):
    """Raw key data ``fold_in(key, i)`` for each query id (compiled once per count: no per-step tracing)."""
    return jax.random.key_data(jax.vmap(lambda i: jax.random.fold_in(key, i))(ids))


def _bucket(k: int) -> int:
    return 1 << (k - 1).bit_length()


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


def _segments_in_order(queries: np.ndarray, todo: list, target: int, threads: int,
                       lookahead: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(q, SLIC superpixels of queries[q])`` for each q of ``todo``, in that order. With ``threads``
    >= 1 they are computed up to ``lookahead`` queries ahead in a pool of host threads (scikit-image
    releases the GIL in parts), so segmentation overlaps the device work the caller does between
    items; 0: one after the other in the calling thread. The labels do not depend on ``threads``."""
    if threads == 0:
        for q in todo:
            yield q, _lime.query_segments(queries[q], target)
        return
    pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="slic")
    try:
        pending = collections.deque()
        upcoming = iter(todo)
        for q in upcoming:
            pending.append((q, pool.submit(_lime.query_segments, queries[q], target)))
            if len(pending) >= lookahead:
                break
        while pending:
            q, future = pending.popleft()
            following = next(upcoming, None)
            if following is not None:
                pending.append((following, pool.submit(_lime.query_segments, queries[following], target)))
            yield q, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def method_options(method: str, config: Optional[dict] = None) -> tuple[MethodCore, dict]:
    """The registry entry of ``method`` and its checked static options (defaults overridden by
    ``config``); an unknown method or option raises a ValueError naming the valid ones."""
    if method not in METHOD_CORES:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    spec = METHOD_CORES[method]
    config = dict(config or {})
    unknown = sorted(set(config) - set(spec.defaults))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {method!r}; its options are {sorted(spec.defaults)}")
    return spec, spec.options(**{**spec.defaults, **config})


def explain_pairs(method: str, embed_fn: EmbedFn, queries: ArrayLike, references: ArrayLike, *, key: jax.Array,
                  pairs: ArrayLike, config: Optional[dict] = None,
                  progress: Optional[Callable[[int], None]] = None, cache_dir: Optional[str] = None,
                  mesh: Optional[Mesh] = None, query_batch: Optional[int] = None,
                  query_ids: Optional[ArrayLike] = None, reference_ids: Optional[ArrayLike] = None,
                  cache_meta: Optional[dict] = None, replace_stale: bool = False,
                  segment_threads: Optional[int] = None) -> np.ndarray:
    """Maps ``[P, H, W]`` for ``pairs [P, 2]`` of (index into ``queries``, index into ``references``).

    Args:
      method: one of ``METHODS``.
      embed_fn: pure ``images [B, H, W, C] -> [B, D]``.
      queries, references: float images ``[N, H, W, C]`` in the model's input space.
      key: PRNG key; the query with id i uses ``fold_in(key, i)``.
      pairs: ``[P, 2]`` integer indices.
      config: the method's options (e.g. ``{"num_masks": 2000}``); unknown names raise.
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

    ``config["compute_dtype"]`` (every method; ``"float32"`` or ``"bfloat16"``) also sets the dtype in
    which the reference embeddings are computed here, so that query and reference go through the
    same forward pass.
    """
    spec, static = method_options(method, config)
    config = dict(config or {})
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
    qid = _ids(query_ids, len(queries), "query_ids")
    rid = _ids(reference_ids, len(references), "reference_ids")
    mesh = parallel.make_mesh(1, local=True) if mesh is None else mesh
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (sx.parallel.make_mesh) or None, got {type(mesh).__name__}")
    split = spec.split_masks and mesh.shape.get(parallel.MASKS, 1) > 1
    if split:
        static = dict(static, mask_axis=parallel.MASKS, mask_axis_size=mesh.shape[parallel.MASKS])
    per_call = checks.check_positive_int(query_batch if query_batch is not None else spec.queries_per_device,
                                         "query_batch") * parallel.stack_size(mesh, split)

    cache, digests = None, None
    if cache_dir:
        meta = {"method": method, "options": {**spec.defaults, **config}, "key": cache_key(key), **(cache_meta or {})}
        if "model" not in meta:  # the parameters' fingerprint (a caller explaining many lists passes its own)
            meta["model"] = fingerprint(embed_fn)
        cache = SaliencyCache(cache_dir, meta, replace_stale=replace_stale)
        used_q, used_r = np.unique(pairs[:, 0]), np.unique(pairs[:, 1])
        digests = (dict(zip(used_q.tolist(), image_digests(queries[used_q]).tolist())),
                   dict(zip(used_r.tolist(), image_digests(references[used_r]).tolist())))
    out = np.zeros((len(pairs), *queries.shape[1:3]), np.float32)
    groups: "OrderedDict[int, np.ndarray]" = OrderedDict()
    for q in dict.fromkeys(pairs[:, 0].tolist()):
        groups[q] = np.flatnonzero(pairs[:, 0] == q)

    def cache_args(q):
        refs = pairs[groups[q], 1]
        return qid[q], rid[refs], digests[0][q], [digests[1][r] for r in refs.tolist()]

    todo = set()
    for q, positions in groups.items():
        cached = cache.get(*cache_args(q)) if cache else None
        if cached is None:
            todo.add(q)
            continue
        out[positions] = cached
        if progress:
            progress(len(positions))
    if not todo:
        return out

    # The work is cut into the same steps whatever is cached (every query of the list, in order), and
    # a step runs when one of its queries is missing: a query's map comes from the same compiled
    # program and inputs as in an uninterrupted run, so a resumed run gives the same maps bit for bit.
    forward = engine.in_compute_dtype(embed_fn, static["compute_dtype"])  # parameters cast once, here
    if spec.references == "embeddings":
        needed = np.unique(pairs[:, 1])
        rows = np.zeros(len(references), np.int64)
        rows[needed] = np.arange(len(needed))
        embedded = engine.apply_in_chunks(forward, references[needed], 128)
        bad = ~np.isfinite(embedded).all(axis=1)
        if bad.any():
            raise ValueError(f"embed_fn returned NaN or infinite embeddings for references {rid[needed[bad]][:10].tolist()}"
                             " (their pairs cannot be explained)")
        reference_inputs = embedded[rows]
    else:
        reference_inputs = references
    order = list(groups)
    segments = {}

    def steps():
        """(superpixel count or None, queries) per device step, over every query of the list in order.
        LIME: queries with the same count share a program; each count's queries are cut into steps as
        they are segmented (host threads running ahead, overlapped with the device work; the same steps
        whatever the threads, so the same maps), a step dispatched once it is full."""
        if not spec.segments:
            for start in range(0, len(order), per_call):
                yield None, order[start:start + per_call]
            return
        target = config.get("num_segments", spec.defaults["num_segments"])
        waiting: dict = {}
        ahead = max(4 * threads, 2 * per_call)
        for q, labels in _segments_in_order(queries, order, target, threads, ahead):
            segments[q] = labels
            members = waiting.setdefault(int(labels.max()) + 1, [])
            members.append(q)
            if len(members) == per_call:
                yield int(labels.max()) + 1, list(members)
                members.clear()
        for count, members in waiting.items():
            if members:
                yield count, members

    with contextlib.closing(steps()) as work:  # closed on an error too: the segmentation threads stop
        for count, chunk in work:
            if not todo.intersection(chunk):
                continue
            bound = engine.BoundCore.of(spec.core, **static, **({} if count is None else {"num_segments": count}))
            width = _bucket(max(len(groups[q]) for q in chunk))
            refs = np.zeros((len(chunk), width, *reference_inputs.shape[1:]), np.float32)
            for i, q in enumerate(chunk):
                refs[i, : len(groups[q])] = reference_inputs[pairs[groups[q], 1]]
            keys = _query_keys(key, np.asarray([qid[q] for q in chunk], np.uint32))
            extra = (np.stack([segments[q] for q in chunk]),) if spec.segments else ()
            maps = parallel.map_queries(bound, mesh, forward, queries[chunk], refs, keys, *extra, split_masks=split)
            bad = [int(qid[q]) for i, q in enumerate(chunk) if not np.isfinite(maps[i, : len(groups[q])]).all()]
            if bad:
                raise ValueError(f"{method} gave NaN or infinite maps for queries {bad[:10]}: embed_fn returned "
                                 "non-finite embeddings for their perturbed images (nothing was cached for them)")
            done = [q for q in chunk if q in todo]
            for i, q in enumerate(chunk):
                if q not in todo:
                    continue
                positions = groups[q]
                out[positions] = maps[i, : len(positions)]
                if cache:
                    cache.put(*cache_args(q)[:2], out[positions], *cache_args(q)[2:])
            if progress:
                progress(sum(len(groups[q]) for q in done))
            for q in chunk:
                segments.pop(q, None)
    return out
