"""Random-access sources for grain: decoded splits held in memory, and Polyvore outfit pairs."""

from __future__ import annotations

import itertools
import zlib
from typing import Sequence

import numpy as np
from tqdm import tqdm

from simexplain_jax.data.tfds_polyvore import condition_index


class InMemorySource:
    """A random-access source over arrays with a shared leading axis: ``source[i] -> {key: array[i]}``.

    Decoding a small split once (the shapes benchmark) keeps PNG decoding out of every training step.
    """

    def __init__(self, arrays: dict):
        sizes = {k: len(v) for k, v in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"arrays differ in length: {sizes}")
        self.arrays = arrays
        self._size = next(iter(sizes.values()))
        # grain checks a resumed iterator's source by repr: make it describe the content
        self._fingerprint = {k: (tuple(np.shape(v)), zlib.crc32(np.ascontiguousarray(v).tobytes()))
                             for k, v in sorted(arrays.items())}

    def __repr__(self) -> str:
        return f"InMemorySource({self._fingerprint})"

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> dict:
        return {k: v[index] for k, v in self.arrays.items()}


class CorruptRecordError(ValueError):
    """A dataset record that cannot be read or decoded."""


class CheckedSource:
    """A random-access source whose read errors name the dataset folder, split and record.

    A flipped byte in an array_record file surfaced as the reader's bare ``RuntimeError``
    ("block header hash mismatch") with no file named; this wrapper re-raises any read or decode
    error as a ``CorruptRecordError`` that says which folder to delete to rebuild the dataset.

    Args:
      source: the split's source (``builder.as_data_source(split)``).
      where: the dataset folder and split, for the message (e.g. ``"tfds/shapes/32px/1.0.0, split test"``).
    """

    def __init__(self, source, where: str):
        self.source = source
        self.where = where

    def __repr__(self) -> str:  # grain checks a resumed iterator's source by repr: the wrapped one's
        return repr(self.source)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        try:
            return self.source[index]
        except (IndexError, KeyError, TypeError):
            raise
        except Exception as err:  # noqa: BLE001  (the reader's and the decoders' errors: re-raised, named)
            raise CorruptRecordError(f"record {index} of {self.where} is unreadable ({type(err).__name__}: "
                                     f"{err}); delete that folder and the dataset is rebuilt on the next run") from err


class SubsetSource:
    """Records ``indices`` of ``source``, in that order, each with ``index`` (its index in ``source``)
    and ``valid`` added: ``source`` is only read at the indices asked for. ``valid [len(indices)]``
    (default all True) marks padding records that a reader drops."""

    def __init__(self, source, indices, valid=None):
        self.source = source
        self.indices = np.asarray(indices, np.int64)
        self.valid = np.ones(len(self.indices), bool) if valid is None else np.asarray(valid, bool)
        if self.indices.ndim != 1 or self.valid.shape != self.indices.shape:
            raise ValueError(f"indices must be 1-D with one valid flag each, got {self.indices.shape} "
                             f"and {self.valid.shape}")
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(source)):
            raise ValueError(f"indices must be in [0, {len(source)}), got [{self.indices.min()}, {self.indices.max()}]")

    def __repr__(self) -> str:
        return f"SubsetSource({self.source!r}, n={len(self.indices)}, crc={zlib.crc32(self.indices.tobytes())})"

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        record = dict(self.source[int(self.indices[position])])
        record.update(index=self.indices[position], valid=self.valid[position])
        return record


def load_arrays(source, keys: Sequence[str], progress: bool = False) -> dict:
    """Every record of a source, decoded and stacked per key.

    Args:
      source: a random-access source.
      keys: the fields to keep.
      progress: show a progress bar.

    Returns:
      ``{key: [N, ...]}``.
    """
    items = range(len(source))
    if progress:
        items = tqdm(items, desc="loading", unit="example", leave=False)
    records = [source[i] for i in items]
    return {k: np.stack([np.asarray(r[k]) for r in records]) for k in keys}


class OutfitPairSource:
    """Compatible pairs of a Polyvore split as records ``{anchor, positive (uint8 images), condition,
    category (of the positive, int), outfit (int)}``: every pair of different-category items in one
    outfit, in both orders. ``conditions`` are the builder's type conditions."""

    def __init__(self, source, conditions: Sequence[Sequence[str]]):
        self.source = source
        self.conditions = [tuple(c) for c in conditions]
        item_ids, categories, outfits = [], [], []
        for i in range(len(source)):
            record = source[i]
            item_ids.append(record["item_id"].decode())
            categories.append(record["category"].decode())
            outfits.append([o.decode() for o in record["outfits"]])
        self.categories = sorted(set(categories))
        members: dict[str, list[int]] = {}
        for index, item_outfits in enumerate(outfits):
            for outfit in item_outfits:
                members.setdefault(outfit, []).append(index)
        outfit_ids = {o: k for k, o in enumerate(sorted(members))}
        pairs = []
        for outfit, indices in sorted(members.items()):
            for a, b in itertools.permutations(indices, 2):
                condition = condition_index(self.conditions, categories[a], categories[b], default=-1)
                if categories[a] != categories[b] and condition >= 0:
                    pairs.append((a, b, condition, self.categories.index(categories[b]), outfit_ids[outfit]))
        if not pairs:
            raise ValueError("no compatible pairs (items of different categories in one outfit) in this split")
        self.pairs = np.asarray(pairs, np.int64)

    def __repr__(self) -> str:
        return f"OutfitPairSource({self.source!r}, pairs={len(self.pairs)}, crc={zlib.crc32(self.pairs.tobytes())})"

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        a, b, condition, category, outfit = self.pairs[index]
        return {"anchor": self.source[int(a)]["image"], "positive": self.source[int(b)]["image"],
                "condition": np.int32(condition), "category": np.int32(category), "outfit": np.int32(outfit)}
