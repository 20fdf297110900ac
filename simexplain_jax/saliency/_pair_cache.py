"""How ``explain_pairs`` uses the per-query map cache: what a cache records and per-query get / put."""

from __future__ import annotations

from typing import Optional

import numpy as np

from simexplain_jax.saliency._options import MethodOptions
from simexplain_jax.saliency.cache import SaliencyCache, fingerprint, image_digests
from simexplain_jax.saliency.cache import key_description


class PairCache:
    """A ``SaliencyCache`` for one pair list, addressed by query row.

    Args:
      directory: the cache folder.
      options: the method's options (recorded, with the method, in ``meta.json``).
      key: the PRNG key of the run (recorded).
      embed_fn: fingerprinted unless ``extra_meta`` holds a ``"model"`` entry.
      queries, references: the images of the rows (their digests are stored with each map).
      pairs: ``[P, 2]`` row indices.
      groups: each query row's positions in ``pairs``.
      query_ids, reference_ids: each row's id in the whole dataset.
      extra_meta: more to record and check, e.g. the dataset and split.
      replace_stale: move a cache written with other settings aside instead of raising.
    """

    def __init__(self, directory: str, options: MethodOptions, key, embed_fn, queries, references, pairs, groups,
                 query_ids, reference_ids, extra_meta: Optional[dict] = None, replace_stale: bool = False):
        meta = {"method": options.method, "options": options.to_dict(), "key": key_description(key),
                **(extra_meta or {})}
        if "model" not in meta:  # the parameters' fingerprint (a caller explaining many lists passes its own)
            meta["model"] = fingerprint(embed_fn)
        self.cache = SaliencyCache(directory, meta, replace_stale=replace_stale)
        used_q, used_r = np.unique(pairs[:, 0]), np.unique(pairs[:, 1])
        self.query_digests = dict(zip(used_q.tolist(), image_digests(queries[used_q]).tolist()))
        self.reference_digests = dict(zip(used_r.tolist(), image_digests(references[used_r]).tolist()))
        self.pairs, self.groups, self.query_ids, self.reference_ids = pairs, groups, query_ids, reference_ids
        self.second_order = options.second_order
        self.map_shape = tuple(queries.shape[1:3])

    def _address(self, q: int):
        refs = self.pairs[self.groups[q], 1]
        return (self.query_ids[q], self.reference_ids[refs], self.query_digests[q],
                [self.reference_digests[r] for r in refs.tolist()])

    def get(self, q: int) -> Optional[tuple]:
        """``(maps, correspondences or None)`` cached for query row ``q`` and its references (in pair
        order), or None. A pair method's entry counts only with its correspondences."""
        found = self.cache.lookup(*self._address(q), extras=("correspondence",) if self.second_order else ())
        if found is None:
            return None
        if found["maps"].shape[1:] != self.map_shape:
            raise ValueError(f"saliency cache file {self.cache.path_of(self.query_ids[q])} holds maps of size "
                             f"{found['maps'].shape[1:]}, but these images give {self.map_shape}: it was written for "
                             "other images. Use another cache directory")
        return found["maps"], found.get("correspondence")

    def put(self, q: int, maps: np.ndarray, correspondences: Optional[np.ndarray] = None) -> None:
        """Stores the maps (and a pair method's correspondences) of query row ``q`` for its
        references (in pair order)."""
        query, references, query_digest, reference_digests = self._address(q)
        extras = None if correspondences is None else {"correspondence": correspondences}
        self.cache.put(query, references, maps, query_digest, reference_digests, extras=extras)
