"""One process's share of a pair list, read through grain (only the images its pairs need).

``read_pair_shard(queries, references, pairs)`` splits the distinct queries of ``pairs`` over the
processes with grain's ``ShardOptions``; all pairs of a query land on one process, so work shared
by a query's references is done once and each saliency-cache file has one writer.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import numpy as np

from simexplain_jax.data.pipeline import SelectKeys, make_loader
from simexplain_jax.data.sources import InMemorySource, SubsetSource
from simexplain_jax.parallel import pad_leading


@dataclasses.dataclass
class PairShard:
    """One process's share of a pair list (``read_pair_shard``): its pairs, as rows of its own
    ``queries`` / ``references`` arrays, with each row's index in the sources."""

    positions: np.ndarray  # [p] ascending: which pairs of the full list are here
    pairs: np.ndarray  # [p, 2] (row of queries, row of references)
    queries: np.ndarray  # [Q, H, W, C] model-ready
    query_ids: np.ndarray  # [Q] index of each query in the query source
    references: np.ndarray  # [R, H, W, C]
    reference_ids: np.ndarray  # [R]
    query_fields: dict  # {key: [Q, ...]}: the query records' fields asked for (e.g. key_mask)
    image_shape: tuple  # (H, W, C), known even where this process holds no pair


def _as_source(images_or_source):
    if isinstance(images_or_source, (np.ndarray, jax.Array)):
        return InMemorySource({"image": images_or_source})
    return images_or_source


def read_pair_shard(queries, references, pairs, *, preprocess=None, query_keys: Sequence[str] = (),
                    shard_index: Optional[int] = None, shard_count: Optional[int] = None,
                    batch_size: int = 64) -> PairShard:
    """Reads this process's share of a pair list through grain, and nothing else.

    The distinct queries of ``pairs`` (sorted) are split into ``shard_count`` contiguous pieces by
    grain's ``ShardOptions`` (the list is padded to a multiple of ``shard_count`` so that no query
    is dropped; padding records are read and dropped); this process reads its queries, then the
    references its queries' pairs name.

    Args:
      queries: a random-access source whose records hold ``"image"`` (e.g. ``tfds.data_source``,
        ``InMemorySource``), or an image array ``[N, H, W, C]``.
      references: the same, for the references.
      pairs: ``[P, 2]`` integer (query index, reference index).
      preprocess: a ``data.pipeline.Preprocess`` making a record's ``image`` model-ready (e.g.
        ``Preprocess(image_size=112)``; its ``keys`` are replaced by what is needed); None: the
        images are used as they are.
      query_keys: fields of the query records to read besides the image (e.g. ``"key_mask"``).
      shard_index: this process's shard; None: ``jax.process_index()``.
      shard_count: the number of shards; None: ``jax.process_count()``.
      batch_size: records per grain batch.

    Returns:
      A ``PairShard``.
    """
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0 or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"pairs must be a non-empty integer [P, 2] array, got {pairs.dtype} {pairs.shape}")
    if shard_index is None or shard_count is None:
        shard_index, shard_count = jax.process_index(), jax.process_count()
    queries, references = _as_source(queries), _as_source(references)
    if pairs.min() < 0 or pairs[:, 0].max() >= len(queries) or pairs[:, 1].max() >= len(references):
        raise ValueError(f"pairs index outside the sources ({len(queries)} queries, {len(references)} references)")

    def read(source, ids, valid, keys, index, count):
        keys = ("image", "index", "valid", *keys)
        transform = SelectKeys(keys) if preprocess is None else dataclasses.replace(preprocess, image_keys=("image",),
                                                                            keys=keys[1:])
        batches = list(make_loader(SubsetSource(source, ids, valid), batch_size=batch_size, preprocess=transform,
                                   shuffle=False, num_epochs=1, shard_index=index, shard_count=count))
        arrays = {k: np.concatenate([b[k] for b in batches]) for k in keys}
        keep = arrays.pop("valid").astype(bool)
        return {k: v[keep] for k, v in arrays.items()}, arrays["image"].shape[1:]

    query_ids = np.unique(pairs[:, 0])
    padded = pad_leading(query_ids, shard_count)
    mine, image_shape = read(queries, padded, np.arange(len(padded)) < len(query_ids), tuple(query_keys),
                             shard_index, shard_count)
    positions = np.flatnonzero(np.isin(pairs[:, 0], mine["index"]))
    reference_ids = np.unique(pairs[positions, 1])
    if len(reference_ids):
        refs, _ = read(references, reference_ids, None, (), 0, 1)
    else:
        refs = {"image": np.zeros((0, *image_shape), np.float32), "index": reference_ids}
    local = np.stack([np.searchsorted(mine["index"], pairs[positions, 0]),
                      np.searchsorted(refs["index"], pairs[positions, 1])], axis=1)
    return PairShard(positions, local, mine["image"], mine["index"], refs["image"], refs["index"],
                     {k: mine[k] for k in query_keys}, tuple(image_shape))
