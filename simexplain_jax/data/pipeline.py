"""Input pipeline: grain loaders over ``tfds.data_source`` with the paper's preprocessing.

Real datasets (AwA2, Polyvore) are resized so the shorter side is 112, centre-cropped to
112 x 112 and normalised with ImageNet mean/std; the shapes benchmark keeps its native size and
is normalised the same way. Shuffling is deterministic given the seed; each process reads its
own shard (``shard_index`` / ``shard_count``, by default ``jax.process_index()`` /
``jax.process_count()``). Batches are dicts of numpy arrays ready for ``jit``.

Transforms are module-level classes so grain's worker processes can pickle them; entry points
that use ``worker_count > 0`` need ``if __name__ == "__main__":``. With several workers the
number of batches can change with the worker count: tests use ``worker_count=0``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import grain
import numpy as np
from PIL import Image

from simexplain_jax.data.preprocess import normalize_images
from simexplain_jax.data.sources import InMemorySource

PAPER_IMAGE_SIZE = 112


def resize_and_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes the shorter side to ``size`` (bilinear), then takes the central ``size x size``.

    Args:
      image: uint8 ``[H, W, 3]``.
      size: the side of the output.

    Returns:
      uint8 ``[size, size, 3]``.
    """
    height, width = image.shape[:2]
    if (height, width) != (size, size):
        scale = size / min(height, width)
        new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
        top, left = (new_h - size) // 2, (new_w - size) // 2
        image = image[top:top + size, left:left + size]
    return image


@dataclasses.dataclass(frozen=True)
class Preprocess(grain.transforms.Map):
    """Decoded example -> model-ready example: each of ``image_keys`` float32 normalised, ``keys`` kept.

    ``image_size=None`` keeps the native size (the shapes benchmark); an int resizes and
    centre-crops (112 for the paper's real datasets). ``keys`` selects the fields to keep
    besides ``image`` (text fields come back as bytes). ``map`` is ``normalize(decode(example))``;
    ``make_loader`` decodes each record and normalises each batch (the same values: normalising is
    elementwise).
    """

    image_size: Optional[int] = None
    keys: Sequence[str] = ("label", "attributes")
    image_keys: Sequence[str] = ("image",)

    def map(self, example):
        return self.normalize(self.decode(example))

    def decode(self, example):
        """One record: each of ``image_keys`` as uint8 ``[size, size, 3]``, ``keys`` as numpy arrays."""
        out = {}
        for image_key in self.image_keys:
            image = np.asarray(example[image_key])
            if image.ndim == 2:
                image = np.repeat(image[..., None], 3, axis=-1)
            if self.image_size is not None:
                image = resize_and_center_crop(image, self.image_size)
            out[image_key] = image
        for key in self.keys:
            out[key] = np.asarray(example[key])
        return out

    def normalize(self, decoded):
        """A decoded record or a batch of them: each of ``image_keys`` normalised (float32)."""
        return {key: normalize_images(value) if key in self.image_keys else value for key, value in decoded.items()}


@dataclasses.dataclass(frozen=True)
class _Decode(grain.transforms.Map):
    """``Preprocess.decode`` of each record."""

    preprocess: Preprocess

    def map(self, example):
        return self.preprocess.decode(example)


@dataclasses.dataclass(frozen=True)
class _Normalize(grain.transforms.Map):
    """``Preprocess.normalize`` of each batch."""

    preprocess: Preprocess

    def map(self, batch):
        return self.preprocess.normalize(batch)


class _IndexSampler:
    """The records and order of ``grain.samplers.IndexSampler`` without the random generator that
    it makes for every record (a numpy Philox; no transform here draws random numbers). Its ``repr``
    is IndexSampler's, so an iterator state saved under either resumes under the other.

    Records come from grain's public ``MapDataset``: this shard's contiguous piece of the records
    (grain's ``ShardOptions`` with ``drop_remainder``), shuffled with ``seed`` (a new order each
    epoch). ``tests/test_loader.py`` checks the order equals IndexSampler's.
    """

    def __init__(self, num_records: int, shard: grain.sharding.ShardOptions, shuffle: bool,
                 num_epochs: Optional[int], seed: int):
        self._reference = grain.samplers.IndexSampler(num_records=num_records, shard_options=shard, shuffle=shuffle,
                                                      num_epochs=num_epochs, seed=seed)
        self._shard_options = shard  # read by grain.DataLoader
        per_shard = num_records // shard.shard_count
        start = per_shard * shard.shard_index
        keys = grain.MapDataset.range(start, start + per_shard)
        self._record_keys = keys.shuffle(seed=seed) if shuffle else keys

    def __len__(self) -> int:
        return len(self._reference)

    def __repr__(self) -> str:
        return repr(self._reference)

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        if not 0 <= index < len(self):
            raise IndexError(f"record index {index} is out of [0, {len(self)})")
        return grain.RecordMetadata(index=index, record_key=self._record_keys[index // self._shard_options.shard_count])


@dataclasses.dataclass(frozen=True)
class SelectKeys(grain.transforms.Map):
    """Keeps ``keys`` of each record, as numpy arrays (records that are model-ready already)."""

    keys: Sequence[str]

    def map(self, example):
        return {key: np.asarray(example[key]) for key in self.keys}


def make_loader(
    source,
    *,
    batch_size: int,
    preprocess: Optional[grain.transforms.Map] = Preprocess(),
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: Optional[int] = 1,
    shard_index: Optional[int] = None,
    shard_count: Optional[int] = None,
    drop_remainder: bool = False,
    worker_count: int = 0,
) -> grain.DataLoader:
    """A grain ``DataLoader`` over a random-access source.

    Shards are equal contiguous pieces and a remainder of ``len(source) % shard_count`` records is
    dropped (pad the source to a multiple of ``shard_count`` to read every record, as
    ``data.shards.read_pair_shard`` does).

    Args:
      source: a random-access source (e.g. ``tfds.data_source(...)``).
      batch_size: records per batch.
      preprocess: the transform of each record; None batches the records as they are.
      seed: the shuffling seed.
      shuffle: whether to shuffle.
      num_epochs: passes over the source; None repeats forever.
      shard_index: this process's shard; None: ``jax.process_index()``.
      shard_count: the number of shards; None: ``jax.process_count()``.
      drop_remainder: drop a last, smaller batch.
      worker_count: grain worker processes (0: read in this process).

    Returns:
      A loader yielding dicts of numpy arrays with a leading batch axis.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(source) == 0:
        raise ValueError("the data source is empty")
    if shard_index is None or shard_count is None:
        import jax

        shard_index, shard_count = jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, shard_count={shard_count}), got {shard_index}")
    shard = grain.sharding.ShardOptions(shard_index=shard_index, shard_count=shard_count, drop_remainder=True)
    sampler = _IndexSampler(len(source), shard, shuffle, num_epochs, seed)
    batch = grain.transforms.Batch(batch_size, drop_remainder=drop_remainder)
    if isinstance(preprocess, Preprocess):  # uint8 records batched, then normalised a batch at a time
        operations = [_Decode(preprocess), batch, _Normalize(preprocess)]
    else:
        operations = ([] if preprocess is None else [preprocess]) + [batch]
    # an in-memory source is read in this thread: grain's read threads and their prefetch bookkeeping
    # (it polls every buffered future per record) cost more than copying a record from an array
    read_options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0) if isinstance(source, InMemorySource) else None
    return grain.DataLoader(data_source=source, sampler=sampler, operations=operations, worker_count=worker_count,
                            read_options=read_options)


def load_all(source, preprocess: Preprocess = Preprocess(), batch_size: int = 512) -> dict:
    """The whole source, in order, as one dict of arrays (for small evaluation splits)."""
    batches = list(make_loader(source, batch_size=batch_size, preprocess=preprocess, shuffle=False,
                               shard_index=0, shard_count=1))
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
