"""Explaining many pairs at once: grouped by query so shared work is done once.

``explain_pairs(method, embed_fn, queries, references, key=..., pairs=[[q, r], ...], config={...})``
returns one ``[H, W]`` map per pair, in the order of ``pairs``.

- Fixed-reference RISE, sliding window and LIME: every reference of a query is explained in one
  call (K reference embeddings, one pass over the query's perturbations). K is padded to a power
  of two so a few compiled programs serve any grouping.
- Variable-reference RISE: the query's N masked embeddings are shared by all its references
  (N + R * K passes for R references).
- The mask method: pairs are optimised ``pair_batch`` at a time in one vmapped call.
- Randomness: the query with index i in ``queries`` uses ``fold_in(key, i)``, so a pair's map is the
  same as the single-pair function called with that key, whatever else is in the list. When the
  arrays hold a subset of a dataset (one process's shard), ``query_ids`` / ``reference_ids`` give
  each row's index in the whole dataset: keys and cache files use those, so the maps equal a run
  over the whole dataset.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from simexplain_jax.saliency import _common
from simexplain_jax.saliency.cache import SaliencyCache
from simexplain_jax.saliency.gradients import gradient, integrated_gradients
from simexplain_jax.saliency.lime import lime, lime_variable
from simexplain_jax.saliency.occlusion import sliding_window, sliding_window_variable
from simexplain_jax.saliency.perturbation import perturbation_batch, perturbation_variable_batch
from simexplain_jax.saliency.random import random
from simexplain_jax.saliency.rise import rise
from simexplain_jax.masks import rise_masks

METHODS = ("rise", "rise_variable", "sliding_window", "sliding_window_variable", "lime", "lime_variable",
           "perturbation", "perturbation_variable", "gradient", "integrated_gradients", "random")
_GROUPED = ("rise", "sliding_window", "lime")


def _embed_rows(embed_fn, images: np.ndarray, rows, batch_size: int = 128) -> dict[int, np.ndarray]:
    """``{row: embedding}`` for the distinct ``rows`` of ``images`` (chunks sized to a power of two)."""
    from simexplain_jax.models.embedding import apply_in_chunks

    rows = sorted(set(int(r) for r in rows))
    embeddings = apply_in_chunks(embed_fn, images[rows], min(batch_size, _bucket(len(rows))))
    return dict(zip(rows, embeddings))


def _ids(ids, count: int, name: str) -> np.ndarray:
    if ids is None:
        return np.arange(count)
    ids = np.asarray(ids)
    if ids.shape != (count,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must be {count} integer ids (one per row), got {ids.dtype} {ids.shape}")
    return ids


def _bucket(k: int) -> int:
    return 1 << (k - 1).bit_length()


def _check(method, queries, references, pairs):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.shape[0] == 0:
        raise ValueError(f"pairs must be a non-empty [P, 2] array of (query, reference) indices, got {pairs.shape}")
    if pairs[:, 0].min() < 0 or pairs[:, 0].max() >= len(queries) or pairs[:, 1].min() < 0 or \
            pairs[:, 1].max() >= len(references):
        raise ValueError("pairs index outside queries / references")
    if np.shape(queries)[1:] != np.shape(references)[1:] or np.ndim(queries) != 4:
        raise ValueError(f"queries and references must be image batches [N, H, W, C] of one shape, got "
                         f"{np.shape(queries)} and {np.shape(references)}")
    return pairs.astype(np.int64)


def explain_pairs(method: str, embed_fn, queries, references, *, key: jax.Array, pairs, config: Optional[dict] = None,
                  progress: Optional[Callable[[int], None]] = None, cache_dir: Optional[str] = None,
                  pair_batch: int = 16, mesh=None, query_ids=None, reference_ids=None,
                  cache_meta: Optional[dict] = None) -> np.ndarray:
    """Maps ``[P, H, W]`` for ``pairs [P, 2]`` of (index into ``queries``, index into ``references``).

    ``config`` holds the method's options (e.g. ``{"num_masks": 2000}``). ``progress(n)`` is called
    with the number of pairs finished after each group (e.g. ``tqdm(total=P).update``). With
    ``cache_dir``, maps are stored per query (``SaliencyCache``) and reused on a rerun.
    ``query_ids [len(queries)]`` / ``reference_ids [len(references)]``: each row's index in the
    whole dataset (default: the row index), used for the random keys and the cache.
    ``cache_meta``: more to record in (and check against) the cache's ``meta.json``, e.g. the
    dataset and split the ids index, so a cache is never reused for other images.
    """
    config = dict(config or {})
    embed_fn = _common.as_pytree_fn(embed_fn)
    pairs = _check(method, queries, references, pairs)
    qid = _ids(query_ids, len(queries), "query_ids")
    rid = _ids(reference_ids, len(references), "reference_ids")

    def query_key(q):  # the key of row q of queries
        return jax.random.fold_in(key, int(qid[q]))

    queries, references = np.asarray(queries, np.float32), np.asarray(references, np.float32)
    cache = SaliencyCache(cache_dir, {"method": method, "config": config, **(cache_meta or {})}) if cache_dir else None
    out = np.zeros((len(pairs), *queries.shape[1:3]), np.float32)
    groups: "OrderedDict[int, list[int]]" = OrderedDict()
    for position, (q, _) in enumerate(pairs):
        groups.setdefault(int(q), []).append(position)

    todo = OrderedDict()
    for q, positions in groups.items():
        refs = pairs[positions, 1]
        cached = cache.get(qid[q], rid[refs]) if cache else None
        if cached is not None:
            out[positions] = cached
            if progress:
                progress(len(positions))
        else:
            todo[q] = positions

    if method in ("perturbation", "perturbation_variable"):
        flat = [(q, p) for q, positions in todo.items() for p in positions]
        needed = _embed_rows(embed_fn, references, pairs[[p for _, p in flat], 1]) if method == "perturbation" else {}
        for start in range(0, len(flat), pair_batch):
            chunk = flat[start:start + pair_batch]
            chunk_pairs = pairs[[p for _, p in chunk]]
            keys = jnp.stack([query_key(q) for q, _ in chunk])
            if method == "perturbation":
                refs = np.stack([needed[int(r)] for r in chunk_pairs[:, 1]])
                maps = perturbation_batch(embed_fn, queries[chunk_pairs[:, 0]], refs, key=keys, **config)
            else:
                maps = perturbation_variable_batch(embed_fn, queries[chunk_pairs[:, 0]],
                                                   references[chunk_pairs[:, 1]], key=keys, **config)
            out[[p for _, p in chunk]] = np.asarray(maps)
            if progress:
                progress(len(chunk))
        if cache:
            for q, positions in todo.items():
                cache.put(qid[q], rid[pairs[positions, 1]], out[positions])
        return out

    if mesh is not None and method in _GROUPED and todo:
        maps = _explain_sharded(method, embed_fn, queries, references, pairs, todo, query_key, config, mesh)
        for q, positions in todo.items():
            out[positions] = maps[q]
            if cache:
                cache.put(qid[q], rid[pairs[positions, 1]], maps[q])
        if progress:
            progress(sum(len(p) for p in todo.values()))
        return out

    ref_embeddings = (_embed_rows(embed_fn, references, [pairs[p, 1] for ps in todo.values() for p in ps])
                      if method in _GROUPED + ("gradient", "integrated_gradients") else {})
    for q, positions in todo.items():
        query = queries[q]
        key_q = query_key(q)
        refs = pairs[positions, 1]
        if method in _GROUPED:
            emb = np.stack([ref_embeddings[int(r)] for r in refs])
            padded = np.zeros((_bucket(len(refs)), emb.shape[1]), np.float32)
            padded[: len(refs)] = emb
            if method == "rise":
                maps = rise(embed_fn, query, padded, key=key_q, **config)
            elif method == "sliding_window":
                maps = sliding_window(embed_fn, query, padded, **config)
            else:
                maps = lime(embed_fn, query, padded, key=key_q, **config)
            maps = np.asarray(maps)[: len(refs)]
        elif method == "random":  # a pair's map depends on (query, reference) only
            maps = np.stack([np.asarray(random(None, query, key=jax.random.fold_in(key_q, int(rid[r])))) for r in refs])
        elif method == "rise_variable":
            maps = _rise_variable_group(embed_fn, query, references[refs], key_q, config)
        else:
            single = []
            for r in refs:
                if method == "sliding_window_variable":
                    single.append(sliding_window_variable(embed_fn, query, references[r], **config))
                elif method == "lime_variable":
                    single.append(lime_variable(embed_fn, query, references[r], key=key_q, **config))
                elif method == "gradient":
                    single.append(gradient(embed_fn, query, ref_embeddings[int(r)], **config))
                else:
                    single.append(integrated_gradients(embed_fn, query, ref_embeddings[int(r)], **config))
            maps = np.stack([np.asarray(m) for m in single])
        out[positions] = maps
        if cache:
            cache.put(qid[q], rid[refs], maps)
        if progress:
            progress(len(positions))
    return out


def _rise_variable_group(embed_fn, query, refs_images, query_key, config):
    """rise_variable for every reference of one query, sharing the N masked-query embeddings:
    equals ``rise_variable(embed_fn, query, r, key=query_key, **config)`` for each r."""
    config = dict(config)
    k = config.pop("num_reference_masks", 30)
    grid, p = config.get("grid_size", 8), config.get("p", 0.5)
    ref_masks = np.asarray(rise_masks(jax.random.fold_in(query_key, 1), k, grid, p, refs_images.shape[1:3]))
    masked = (refs_images[:, None] * ref_masks[None, :, :, :, None]).reshape(-1, *refs_images.shape[1:])
    embeddings = np.stack([v for _, v in sorted(_embed_rows(embed_fn, masked, range(len(masked))).items())])
    padded = np.zeros((_bucket(len(embeddings)), embeddings.shape[1]), np.float32)
    padded[: len(embeddings)] = embeddings
    maps = np.asarray(rise(embed_fn, query, padded, key=jax.random.fold_in(query_key, 0), **config))
    return maps[: len(embeddings)].reshape(len(refs_images), k, *maps.shape[1:]).mean(axis=1)


def _explain_sharded(method, embed_fn, queries, references, pairs, todo, query_key, config, mesh):
    """{query: maps [R, H, W]} for the grouped methods, queries split over ``mesh``."""
    import importlib
    import inspect

    from simexplain_jax import masks as _masks
    from simexplain_jax.parallel import MASKS, sharded_queries
    from simexplain_jax.saliency import occlusion

    # the package re-exports functions named like these modules: import the modules themselves
    rise_module = importlib.import_module("simexplain_jax.saliency.rise")
    lime_module = importlib.import_module("simexplain_jax.saliency.lime")

    options = {name: param.default for name, param in inspect.signature(
        {"rise": rise, "sliding_window": sliding_window, "lime": lime}[method]).parameters.items()
        if param.kind == param.KEYWORD_ONLY and param.default is not inspect.Parameter.empty}
    options.update(config)
    order = list(todo)
    ref_embeddings = _embed_rows(embed_fn, references, [pairs[p, 1] for ps in todo.values() for p in ps])
    k = _bucket(max(len(todo[q]) for q in order))
    refs = np.zeros((len(order), k, next(iter(ref_embeddings.values())).shape[0]), np.float32)
    for i, q in enumerate(order):
        refs[i, : len(todo[q])] = np.stack([ref_embeddings[int(r)] for r in pairs[todo[q], 1]])
    stacked = [queries[order], refs, np.asarray(jax.random.key_data(jnp.stack([query_key(q)
                                                                                 for q in order])))]
    similarity = options["similarity"]
    split = method == "rise" and mesh.shape.get(MASKS, 1) > 1  # each query's RISE masks split over the masks axis
    if method == "rise":
        num_masks = options["num_masks"]
        _masks.check_rise_options(num_masks, options["grid_size"], options["p"])

        def one(embed, query, r, key_data):
            args = (embed, query, r, jax.random.wrap_key_data(key_data))
            settings = (num_masks, options["grid_size"], options["p"], options["batch_size"], options["normalize"],
                        similarity)
            if split:
                return rise_module._rise_maps_share(*args, *settings, MASKS, mesh.shape[MASKS])
            return rise_module._rise_maps(*args, None, *settings)
    elif method == "sliding_window":
        def one(embed, query, r, key_data):
            scores = occlusion._occlusion_scores(embed, query, r, options["window"], options["stride"],
                                                 options["padding"], options["batch_size"], similarity)
            return occlusion._upsample_grid(1.0 - scores, query.shape[0], query.shape[1])
    else:
        segments = np.stack([options["segments"] if options.get("segments") is not None else
                             lime_module.superpixels(lime_module.denormalize(queries[q]), options["num_segments"])
                             for q in order]).astype(np.int32)
        counts = segments.reshape(len(order), -1).max(axis=1) + 1
        out = {}
        for count in np.unique(counts):  # each query with its own superpixel count, as the unsharded path
            chosen = np.flatnonzero(counts == count)

            def one(embed, query, r, key_data, seg, num_segments=int(count)):
                coefficients = lime_module._lime_coefficients(
                    embed, query, r, jax.random.wrap_key_data(key_data), seg, num_segments, options["num_samples"],
                    options["kernel_width"], options["ridge_alpha"], options["batch_size"], similarity)
                return coefficients[:, seg]

            maps = sharded_queries(one, mesh)(embed_fn, *[x[chosen] for x in stacked], segments[chosen])
            out.update({order[i]: maps[j, : len(todo[order[i]])] for j, i in enumerate(chosen)})
        return out

    maps = sharded_queries(one, mesh, split_masks=split)(embed_fn, *stacked)
    return {q: maps[i, : len(todo[q])] for i, q in enumerate(order)}
