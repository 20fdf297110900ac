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

    def _address(self, q: int):
        refs = self.pairs[self.groups[q], 1]
        return (self.query_ids[q], self.reference_ids[refs], self.query_digests[q],
                [self.reference_digests[r] for r in refs.tolist()])

    def get(self, q: int) -> Optional[np.ndarray]:
        """The cached maps of query row ``q`` for its references (in pair order), or None."""
        return self.cache.get(*self._address(q))

    def put(self, q: int, maps: np.ndarray) -> None:
        """Stores the maps of query row ``q`` for its references (in pair order)."""
        query, references, query_digest, reference_digests = self._address(q)
        self.cache.put(query, references, maps, query_digest, reference_digests)
