"""TFDS builder ``polyvore_outfits``: Polyvore Outfits from the folder the user downloaded.

Layout (the polyvore_outfits archive, extracted; ``manual_dir`` may be that folder or its parent):

    images/<item_id>.jpg
    polyvore_item_metadata.json      {item_id: {"semantic_category": "tops", ...}, ...}
    nondisjoint/{train,valid,test}.json and disjoint/{train,valid,test}.json:
                                     [{"set_id": "...", "items": [{"item_id": "...", "index": 1}, ...]}, ...]
    polyvore_attributes.json         {"attributes": [205 names], "annotations": {item_id: [attribute ids]}}

Configs ``nondisjoint`` (the paper's) and ``disjoint``. Each split holds every item of that
split's outfits once, with the outfits it belongs to. Items of different types in one outfit are
compatible (positive) pairs; their *type condition* is the unordered pair of their semantic
categories, one of ``type_conditions(...)`` (all pairs of distinct categories that co-occur in a
training outfit, sorted), stored in the builder's metadata. Nothing is unpickled, and an item id
that would name a file outside ``images/`` (``../../x``, an absolute path) is rejected.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from simexplain_jax.data._manual import manual_root, rgb_image_feature
from simexplain_jax.io import path_inside

INSTRUCTIONS = (
    "Download Polyvore Outfits (polyvore_outfits.zip, about 6 GB; see https://github.com/mvasil/fashion-compatibility) "
    "and the SANE attribute annotations (polyvore_attributes.json, from https://github.com/VisionLearningGroup/SANE), "
    "put polyvore_attributes.json inside the extracted polyvore_outfits folder, and pass that folder as manual_dir: "
    "tfds.builder('polyvore_outfits/nondisjoint', data_dir=...).download_and_prepare("
    "download_config=tfds.download.DownloadConfig(manual_dir=FOLDER))."
)
SPLIT_FILES = {"train": "train.json", "validation": "valid.json", "test": "test.json"}
NUM_ATTRIBUTES = 205


def read_json(path: str):
    """A JSON file's value; a file that does not parse is a ValueError naming it and the line."""
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


def outfit_items(outfits: list, where: str = "the split file") -> dict[str, list[str]]:
    """``{set_id: [item_id, ...]}`` from a split file's outfits.

    Raises:
      ValueError: an outfit without ``set_id`` or a list of ``items`` with ``item_id``, naming
        ``where`` and the outfit's position.
    """
    if not isinstance(outfits, list):
        raise ValueError(f"{where}: expected a list of outfits, got {type(outfits).__name__}")
    out = {}
    for n, outfit in enumerate(outfits):
        items = outfit.get("items") if isinstance(outfit, dict) else None
        if (not isinstance(outfit, dict) or "set_id" not in outfit or not isinstance(items, list)
                or not all(isinstance(item, dict) and "item_id" in item for item in items)):
            raise ValueError(f"{where}: outfit {n} needs a 'set_id' and a list of 'items' with an 'item_id' each")
        out[str(outfit["set_id"])] = [str(item["item_id"]) for item in items]
    return out


def item_categories(metadata: dict, where: str = "polyvore_item_metadata.json") -> dict[str, str]:
    """``{item_id: semantic category}`` from the item metadata file.

    Raises:
      ValueError: an item without a ``semantic_category`` string, naming it.
    """
    if not isinstance(metadata, dict):
        raise ValueError(f"{where}: expected an object of items, got {type(metadata).__name__}")
    categories = {}
    for item, entry in metadata.items():
        category = entry.get("semantic_category") if isinstance(entry, dict) else None
        if not isinstance(category, str) or not category:
            raise ValueError(f"{where}: item {item} has no 'semantic_category' string")
        categories[str(item)] = category
    return categories


def attribute_annotations(attributes: dict, where: str = "polyvore_attributes.json") -> tuple[list, dict]:
    """``(names, {item_id: [attribute index, ...]})`` from the attribute file.

    Raises:
      ValueError: not ``NUM_ATTRIBUTES`` names, or an item's indices that are not integers in
        ``[0, NUM_ATTRIBUTES)``, naming the item.
    """
    if not isinstance(attributes, dict) or "attributes" not in attributes or "annotations" not in attributes:
        raise ValueError(f"{where}: expected an object with 'attributes' (the names) and 'annotations'")
    names = attributes["attributes"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where}: 'attributes' must be a list of names")
    if len(names) != NUM_ATTRIBUTES:
        raise ValueError(f"{where} lists {len(names)} attributes, expected {NUM_ATTRIBUTES}")
    if not isinstance(attributes["annotations"], dict):
        raise ValueError(f"{where}: 'annotations' must map item ids to attribute indices")
    annotations = {}
    for item, indices in attributes["annotations"].items():
        if (not isinstance(indices, list)
                or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < NUM_ATTRIBUTES for i in indices)):
            raise ValueError(f"{where}: item {item} has attribute indices {indices!r}; each must be an integer "
                             f"in [0, {NUM_ATTRIBUTES})")
        annotations[str(item)] = indices
    return list(names), annotations


def type_conditions(outfits: dict[str, list[str]], categories: dict[str, str]) -> list[tuple[str, str]]:
    """All unordered pairs of distinct semantic categories that co-occur in an outfit, sorted."""
    pairs = set()
    for items in outfits.values():
        for a, b in itertools.combinations(items, 2):
            ca, cb = categories[a], categories[b]
            if ca != cb:
                pairs.add(tuple(sorted((ca, cb))))
    return sorted(pairs)


def condition_index(conditions: Sequence[tuple[str, str]], category_a: str, category_b: str,
                    default: Optional[int] = None) -> int:
    """The type condition of a pair of items of two categories.

    Args:
      conditions: the type conditions, sorted category pairs (``type_conditions``, or a builder's
        ``metadata["type_conditions"]`` as tuples).
      category_a: the first item's category.
      category_b: the second item's category (the order does not matter).
      default: what a pair without a condition gives (the same category twice, or categories never
        seen together in a training outfit); None raises a ValueError instead.

    Returns:
      The condition's index in ``conditions``, or ``default``.
    """
    key = tuple(sorted((category_a, category_b)))
    if key in conditions:
        return conditions.index(key)
    if default is None:
        raise ValueError(f"no type condition for categories {key}; known: {len(conditions)} pairs")
    return default


def compatible_pairs(outfits: dict[str, list[str]], categories: dict[str, str],
                     conditions: list[tuple[str, str]]) -> list[tuple[str, str, int]]:
    """Every pair of different-type items in one outfit.

    Args:
      outfits: ``{set_id: [item_id, ...]}``.
      categories: ``{item_id: semantic category}``.
      conditions: the type conditions (``type_conditions``).

    Returns:
      ``(item_a, item_b, condition)`` for each pair.
    """
    out = []
    for items in outfits.values():
        for a, b in itertools.combinations(items, 2):
            if categories[a] != categories[b]:
                out.append((a, b, condition_index(conditions, categories[a], categories[b])))
    return out


def image_path(root: str, item: str, what: str = "item id") -> str:
    """The image file of an item, ``<root>/images/<item>.jpg``.

    Args:
      root: the dataset root.
      item: the item id.
      what: what the id is, for the error message.

    Raises:
      ValueError: an id that would leave ``images/``.
    """
    return path_inside(os.path.join(root, "images"), f"{item}.jpg", what=what)


@dataclasses.dataclass
class PolyvoreConfig(tfds.core.BuilderConfig):
    split_folder: str = "nondisjoint"


class PolyvoreOutfits(tfds.core.GeneratorBasedBuilder):
    """Polyvore Outfits with SANE's 205 attributes (manual download)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    BUILDER_CONFIGS = [PolyvoreConfig(name="nondisjoint", split_folder="nondisjoint"),
                       PolyvoreConfig(name="disjoint", split_folder="disjoint")]
    DEFAULT_CONFIG_NAME = "nondisjoint"

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Polyvore Outfits: typed fashion items grouped into compatible outfits.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "item_id": tfds.features.Text(),
                "category": tfds.features.Text(),
                "attributes": tfds.features.Tensor(shape=(NUM_ATTRIBUTES,), dtype=np.bool_),
                "outfits": tfds.features.Sequence(tfds.features.Text()),
            }),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        folder = self.builder_config.split_folder
        required = ["polyvore_item_metadata.json", "polyvore_attributes.json", "images"]
        required += [f"{folder}/{name}" for name in SPLIT_FILES.values()]
        root = manual_root(dl_manager, "polyvore_outfits", "polyvore_outfits", required, INSTRUCTIONS)
        categories = item_categories(read_json(os.path.join(root, "polyvore_item_metadata.json")))
        names, annotations = attribute_annotations(read_json(os.path.join(root, "polyvore_attributes.json")))
        splits = {split: outfit_items(read_json(os.path.join(root, folder, file)), f"{folder}/{file}")
                  for split, file in SPLIT_FILES.items()}
        for split, outfits in splits.items():
            for items in outfits.values():
                for item in items:
                    if item not in categories:
                        raise ValueError(f"item {item} of {folder}/{SPLIT_FILES[split]} is not in polyvore_item_metadata.json")
                    image_path(root, item, f"item id of {folder}/{SPLIT_FILES[split]}")
        conditions = type_conditions(splits["train"], categories)
        self.info.metadata.update(attribute_names=names, type_conditions=[list(c) for c in conditions],
                                  categories=sorted(set(categories.values())))
        return {split: self._generate_examples(root, outfits, categories, annotations)
                for split, outfits in splits.items()}

    def _generate_examples(self, root, outfits, categories, annotations):
        membership: dict[str, list[str]] = {}
        for set_id, items in outfits.items():
            for item in items:
                membership.setdefault(item, []).append(set_id)
        for item in sorted(membership):
            labels = np.zeros(NUM_ATTRIBUTES, bool)
            labels[np.asarray(annotations.get(item, []), np.int64)] = True
            path = image_path(root, item)
            if not os.path.exists(path):
                raise FileNotFoundError(f"polyvore_outfits: missing image {path}.\n{INSTRUCTIONS}")
            yield item, {"image": rgb_image_feature(path), "item_id": item, "category": categories[item],
                         "attributes": labels, "outfits": sorted(membership[item])}
