"""Random-access sources for grain: decoded splits held in memory, and Polyvore outfit pairs."""

from __future__ import annotations

import itertools
import zlib
from typing import Sequence

import numpy as np
from tqdm import tqdm


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


def load_arrays(source, keys: Sequence[str], progress: bool = False) -> dict:
    """Every record of ``source`` (decoded), stacked per key: ``{key: [N, ...]}``."""
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
                key = tuple(sorted((categories[a], categories[b])))
                if categories[a] != categories[b] and key in self.conditions:
                    pairs.append((a, b, self.conditions.index(key), self.categories.index(categories[b]),
                                  outfit_ids[outfit]))
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
