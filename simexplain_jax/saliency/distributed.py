"""``explain_pairs`` over every process of a multi-process run, each reading only its share."""

from __future__ import annotations

from typing import Optional, Union

import jax
import numpy as np
from jax.typing import ArrayLike

from simexplain_jax import parallel
from simexplain_jax.data.shards import read_pair_shard
from simexplain_jax.engine import EmbedFn
from simexplain_jax.saliency._options import MethodOptions
from simexplain_jax.saliency.pairs import explain_pairs


def explain_pairs_distributed(method: Union[str, MethodOptions], embed_fn: EmbedFn, queries: ArrayLike,
                              references: ArrayLike, *,
                              key: Optional[jax.Array], pairs: ArrayLike, config: Optional[dict] = None,
                              preprocess=None, batch_size: int = 64, **options) -> np.ndarray:
    """``explain_pairs`` over every process of a multi-process run (after
    ``sx.parallel.initialize_distributed``), each process reading only its share of the images
    (``sx.data.shards.read_pair_shard``: ``queries`` / ``references`` are sources or arrays,
    ``preprocess`` as there) and explaining it on a mesh of its local devices. The maps are
    gathered with JAX's collectives: every process returns all ``[P, H, W]`` maps, equal to a
    single-process run (randomness is keyed by each query's index in the source, not by process).
    """
    shard = read_pair_shard(queries, references, pairs, preprocess=preprocess, batch_size=batch_size)
    local = np.zeros((len(shard.positions), *shard.image_shape[:2]), np.float32)
    if len(shard.positions):
        local = explain_pairs(method, embed_fn, shard.queries, shard.references, key=key, pairs=shard.pairs,
                              config=config, mesh=parallel.make_mesh(local=True), query_ids=shard.query_ids,
                              reference_ids=shard.reference_ids, **options)
    return parallel.gather_rows(shard.positions, local, len(np.asarray(pairs)))
