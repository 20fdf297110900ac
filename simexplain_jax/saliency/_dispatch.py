"""How ``explain_pairs`` runs the queries it must compute: cut into steps, each step on a mesh.

The steps cover every query of the list in order, whatever is cached, and a step runs when one of
its queries is missing: a query's maps then come from the same compiled program and inputs as in
an uninterrupted run, so a resumed run gives the same maps bit for bit. LIME's steps group
queries by their superpixel capacity (one program per capacity), segmented ahead in host threads.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
from typing import Callable, Iterator, Optional

import jax
import numpy as np
from jax.sharding import Mesh

from simexplain_jax import engine, parallel
from simexplain_jax.saliency import _lime
from simexplain_jax.saliency._options import CoreCall, MethodOptions


@jax.jit
def _query_keys(key, ids):
    """Raw key data ``fold_in(key, i)`` for each query id (compiled once per count: no per-step tracing)."""
    return jax.random.key_data(jax.vmap(lambda i: jax.random.fold_in(key, i))(ids))


def _bucket(k: int) -> int:
    return 1 << (k - 1).bit_length()


def segments_in_order(queries: np.ndarray, todo: list, target: int, threads: int,
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


def steps(options: MethodOptions, queries: np.ndarray, order: list, per_call: int, threads: int,
          segments: dict) -> Iterator[tuple[Optional[int], list]]:
    """``(superpixel capacity or None, queries)`` per device step, over every query of ``order``.

    LIME: queries with the same capacity (``_lime.segment_capacity`` of their superpixel count; one
    for the counts around SLIC's target) share a program; each capacity's queries are cut into
    steps as they are segmented (their labels stored in ``segments``; host threads running ahead,
    the same steps whatever the threads), a step yielded once it is full."""
    if not options.segments:
        for start in range(0, len(order), per_call):
            yield None, order[start:start + per_call]
        return
    waiting: dict = {}
    ahead = max(4 * threads, 2 * per_call)
    for q, labels in segments_in_order(queries, order, options.num_segments, threads, ahead):
        segments[q] = labels
        capacity = _lime.segment_capacity(int(labels.max()) + 1, options.num_segments)
        members = waiting.setdefault(capacity, [])
        members.append(q)
        if len(members) == per_call:
            yield capacity, list(members)
            members.clear()
    for capacity, members in waiting.items():
        if members:
            yield capacity, members


def reference_inputs(options: MethodOptions, forward, references: np.ndarray, pairs: np.ndarray,
                     reference_ids: np.ndarray) -> np.ndarray:
    """What the method's core takes for each reference row: its embedding (computed here, with
    ``forward``, for the rows ``pairs`` use) or, for a variable reference, the image itself."""
    if options.references != "embeddings":
        return references
    needed = np.unique(pairs[:, 1])
    rows = np.zeros(len(references), np.int64)
    rows[needed] = np.arange(len(needed))
    embedded = engine.apply_in_chunks(forward, references[needed], 128)
    bad = ~np.isfinite(embedded).all(axis=1)
    if bad.any():
        raise ValueError(f"embed_fn returned NaN or infinite embeddings for references "
                         f"{reference_ids[needed[bad]][:10].tolist()} (their pairs cannot be explained)")
    return embedded[rows]


def run(options: MethodOptions, embed_fn, queries: np.ndarray, references: np.ndarray, key, pairs: np.ndarray,
        groups: dict, todo: set, *, mesh: Mesh, query_batch: Optional[int], query_ids: np.ndarray,
        reference_ids: np.ndarray, threads: int, done: Callable[[int, np.ndarray, Optional[np.ndarray]], None],
        progress: Optional[Callable[[int], None]]) -> None:
    """Computes the maps of every query row in ``todo`` and hands each to ``done(q, maps [R, H, W],
    correspondences [R, ...] or None)`` (R its references, in pair order; correspondences for the
    pair methods); ``progress`` gets the pairs finished after each step."""
    split = options.split_masks and mesh.shape.get(parallel.MASKS, 1) > 1
    context = dict(mask_axis=parallel.MASKS, mask_axis_size=mesh.shape[parallel.MASKS]) if split else {}
    per_call = (options.queries_per_device if query_batch is None else query_batch) * parallel.stack_size(mesh, split)
    forward = engine.in_compute_dtype(embed_fn, options.compute_dtype)  # parameters cast once, here
    inputs = reference_inputs(options, forward, references, pairs, reference_ids)
    segments: dict = {}
    with contextlib.closing(steps(options, queries, list(groups), per_call, threads, segments)) as work:
        for capacity, chunk in work:  # closed on an error too: the segmentation threads stop
            if not todo.intersection(chunk):
                continue
            call = CoreCall.of(**context, **({} if capacity is None else {"capacity": capacity}))
            width = _bucket(max(len(groups[q]) for q in chunk))
            refs = np.zeros((len(chunk), width, *inputs.shape[1:]), np.float32)
            for i, q in enumerate(chunk):
                refs[i, : len(groups[q])] = inputs[pairs[groups[q], 1]]
            keys = _query_keys(key, np.asarray([query_ids[q] for q in chunk], np.uint32))
            extra = (np.stack([segments[q] for q in chunk]),) if options.segments else ()
            out = parallel.map_queries(call, mesh, (forward, options), queries[chunk], refs, keys, *extra,
                                       split_masks=split)
            maps, corr = out.maps, out.correspondence
            bad = [int(query_ids[q]) for i, q in enumerate(chunk)
                   if not np.isfinite(maps[i, : len(groups[q])]).all()]
            if bad:
                raise ValueError(f"{options.method} gave NaN or infinite maps for queries {bad[:10]}: embed_fn "
                                 "returned non-finite embeddings for their perturbed images (nothing was cached "
                                 "for them)")
            finished = [q for q in chunk if q in todo]
            if corr is not None and not np.isfinite(corr).all():
                raise ValueError(f"{options.method} gave NaN or infinite correspondences: embed_fn returned "
                                 "non-finite embeddings (nothing was cached for them)")
            for i, q in enumerate(chunk):
                if q in todo:
                    done(q, maps[i, : len(groups[q])], None if corr is None else corr[i, : len(groups[q])])
            if progress:
                progress(sum(len(groups[q]) for q in finished))
            for q in chunk:
                segments.pop(q, None)
