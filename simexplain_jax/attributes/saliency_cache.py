"""The training-saliency cache of Eq. 2: for every training image, up to R saliency maps against
positive references, computed query-major through ``explain_pairs`` (one pass over the masks per
image for all its references), resized to the activation-map grid and stored in shards.

Layout: ``<directory>/meta.json`` and ``shard_<start>.npz`` (``maps [S, R, g, g]``, ``valid [S, R]``),
each written atomically; a rerun loads finished shards and computes only the missing ones. The
meta records the model's fingerprint, the key and a fingerprint of the images besides the
settings, so a cache is never reused for another model or other images (a mismatch raises,
naming what differs); an unreadable shard is named in a warning, moved aside and recomputed.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from simexplain_jax.io import write_atomic
from simexplain_jax.saliency.cache import SaliencyCache, fingerprint, image_digests, key_description, move_aside
from simexplain_jax.saliency.pairs import explain_pairs


def resize_maps(maps: np.ndarray, grid: int) -> np.ndarray:
    """``[N, H, W] -> [N, grid, grid]`` by area-weighted (antialiased) linear resizing."""
    return np.asarray(jax.image.resize(jnp.asarray(maps), (maps.shape[0], grid, grid), "linear", antialias=True))


def training_saliency(method: str, embed_fn, images: np.ndarray, references: Sequence[Sequence[int]], *,
                      key: jax.Array, config: dict, grid: int, max_references: int, directory: str,
                      shard_size: int = 256, progress: Optional[Callable[[int], None]] = None,
                      replace_stale: bool = False):
    """``(maps [Q, R, grid, grid] float32, valid [Q, R] bool)`` for the first Q = ``len(references)``
    of ``images`` (normalised ``[N, H, W, C]``) against ``references[i]`` (indices into all of
    ``images``; at most R of them are used). ``config`` holds ``method``'s ``explain_pairs``
    options (for RISE e.g. ``sampler`` and ``tolerance``); the cache records them. A cache in
    ``directory`` made with other settings (another model, key or images included) raises naming
    what differs, or with ``replace_stale`` is moved aside and recomputed."""
    n = len(references)
    # writes meta.json, or checks the one there against these settings
    SaliencyCache(directory, {"method": method, "config": config, "grid": grid, "R": max_references,
                              "num_queries": n, "num_images": len(images), "shard_size": shard_size,
                              "model": fingerprint(embed_fn), "key": key_description(key),
                              "images": fingerprint(image_digests(images))}, replace_stale=replace_stale)
    maps = np.zeros((n, max_references, grid, grid), np.float32)
    valid = np.zeros((n, max_references), bool)
    for start in range(0, n, shard_size):
        stop = min(start + shard_size, n)
        path = os.path.join(directory, f"shard_{start:07d}.npz")
        loaded = False
        if os.path.exists(path):
            try:
                with np.load(path, allow_pickle=False) as data:
                    maps[start:stop], valid[start:stop] = data["maps"], data["valid"]
                loaded = True
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
                aside = move_aside(path, "corrupt")
                warnings.warn(f"saliency cache shard {path} is unreadable ({type(err).__name__}: {err}); moved to "
                              f"{aside} and recomputed", stacklevel=2)
        if not loaded:
            pairs = [(i, r) for i in range(start, stop) for r in list(references[i])[:max_references]]
            if pairs:
                full = explain_pairs(method, embed_fn, images, images, key=key, pairs=np.array(pairs), config=config)
                small = resize_maps(full, grid)
                slot = {i: 0 for i in range(start, stop)}
                for (i, _), m in zip(pairs, small):
                    maps[i, slot[i]], valid[i, slot[i]] = m, True
                    slot[i] += 1
            write_atomic(path, lambda f: np.savez(f, maps=maps[start:stop], valid=valid[start:stop]))
        if progress:
            progress(stop - start)
    return maps, valid
