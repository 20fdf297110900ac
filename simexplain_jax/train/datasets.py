"""Training and evaluation data for similarity models, per dataset.

``similarity_data(dataset, ...)`` builds (or finds) the TFDS dataset and returns what training
needs: a random-access training source and its preprocessing for grain, the batch kind
('labels' or 'outfits'), and validation / test pair sets for pair-verification AUC.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

import simexplain_jax.data  # noqa: F401  (registers the builders)
from simexplain_jax.data import pairs as pairs_lib
from simexplain_jax.data import reference_files
from simexplain_jax.data.pipeline import PAPER_IMAGE_SIZE, Preprocess, resize_and_center_crop
from simexplain_jax.data.sources import InMemorySource, OutfitPairSource, load_arrays

DATASETS = ("shapes/32px", "shapes/64px", "shapes/112px", "shapes/32px_shortcut", "shapes/64px_shortcut", "awa2",
            "polyvore_outfits/nondisjoint", "polyvore_outfits/disjoint")
MANUAL = ("awa2", "polyvore_outfits")


@dataclasses.dataclass
class PairSet:
    """Images (uint8, model resolution) and index pairs with labels; ``conditions [P]`` for
    type-aware models (-1 where the two items share a category: scored in the general space)."""

    images: np.ndarray
    pairs: np.ndarray
    labels: np.ndarray
    conditions: Optional[np.ndarray] = None


@dataclasses.dataclass
class SimilarityData:
    train_source: object
    preprocess: Preprocess
    batch_kind: str
    image_size: int
    validation: PairSet
    test: PairSet
    num_conditions: int = 0


def check_dataset(dataset: str, manual_dir: str, test_pairs: str = "") -> None:
    """Fails fast with a clear message for an unknown dataset, a missing manual folder or a
    ``test_pairs`` that is neither a packaged pair list nor an existing file."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if dataset.split("/")[0] in MANUAL and (not manual_dir or not os.path.isdir(manual_dir)):
        raise FileNotFoundError(f"dataset {dataset!r} needs config.manual_dir, the folder you downloaded "
                                f"(got {manual_dir!r}); see the README's Datasets section")
    if test_pairs:
        reference_files.check_pair_file(test_pairs, "test_pairs")


def _images(source, size: Optional[int], progress: bool) -> np.ndarray:
    images = load_arrays(source, ["image"], progress)["image"]
    if size is not None:
        images = np.stack([resize_and_center_crop(im, size) for im in images])
    return images


def _sampled_pairs(labels, num_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    sampled = pairs_lib.sample_pairs(labels, num_pairs, seed)
    return np.array([[int(p.query), int(p.reference)] for p in sampled]), np.array([p.label for p in sampled])


def _listed_pairs(path: str, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of ``path`` (a file or ``"reference:NAME"``) as indices into ``ids``, with labels."""
    index = {image_id: i for i, image_id in enumerate(ids)}
    listed = reference_files.read_pair_file(path, "test_pairs")
    missing = [p for p in listed if p.query not in index or p.reference not in index]
    if missing:
        raise ValueError(f"{path}: {len(missing)} pairs name images that are not in the split (e.g. {missing[0]})")
    return (np.array([[index[p.query], index[p.reference]] for p in listed]), np.array([p.label for p in listed]))


def similarity_data(dataset: str, *, data_dir: str, manual_dir: str = "", num_eval_pairs: int = 2000, seed: int = 0,
                    test_pairs: str = "", progress: bool = False) -> SimilarityData:
    """See the module docstring. ``test_pairs``: a pair file of image ids for the test set, or
    ``"reference:NAME"`` for a packaged one (``reference_files``); empty: ``num_eval_pairs``
    balanced pairs sampled from the test split."""
    check_dataset(dataset, manual_dir, test_pairs)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder = tfds.builder(dataset, data_dir=data_dir)
    builder.download_and_prepare(download_config=download_config)
    name = dataset.split("/")[0]
    if name == "shapes":
        size = builder.info.features["image"].shape[0]
        train = InMemorySource(load_arrays(builder.as_data_source("train"), ["image", "label"], progress))
        sets = {}
        for split in ("validation", "test"):
            source = builder.as_data_source(split)
            arrays = load_arrays(source, ["image", "label", "image_id"], progress)
            if split == "test" and test_pairs:
                pairs, labels = _listed_pairs(test_pairs, [i.decode() for i in arrays["image_id"]])
            else:
                pairs, labels = _sampled_pairs(arrays["label"], num_eval_pairs, seed + (split == "test"))
            sets[split] = PairSet(arrays["image"], pairs, labels)
        return SimilarityData(train, Preprocess(keys=("label",)), "labels", size, sets["validation"], sets["test"])
    size = PAPER_IMAGE_SIZE
    if name == "awa2":
        sets = {}
        for split in ("validation", "test"):
            source = builder.as_data_source(split)
            labels = load_arrays(source, ["label"])["label"]
            if split == "test" and test_pairs:
                ids = [source[i]["image_id"].decode() for i in range(len(source))]
                pairs, pair_labels = _listed_pairs(test_pairs, ids)
            else:
                pairs, pair_labels = _sampled_pairs(labels, num_eval_pairs, seed + (split == "test"))
            sets[split] = PairSet(_images(source, size, progress), pairs, pair_labels)
        return SimilarityData(builder.as_data_source("train"), Preprocess(image_size=size, keys=("label",)), "labels",
                              size, sets["validation"], sets["test"])
    # polyvore outfits: type-aware pairs
    conditions = [tuple(c) for c in builder.info.metadata["type_conditions"]]
    train = OutfitPairSource(builder.as_data_source("train"), conditions)
    sets = {}
    for split in ("validation", "test"):
        source = builder.as_data_source(split)
        ids = [source[i]["item_id"].decode() for i in range(len(source))]
        categories = [source[i]["category"].decode() for i in range(len(source))]
        if split == "test" and test_pairs:
            pairs, labels = _listed_pairs(test_pairs, ids)
        else:
            outfit_of = [source[i]["outfits"][0].decode() if len(source[i]["outfits"]) else str(i)
                         for i in range(len(source))]
            pairs, labels = _sampled_pairs(outfit_of, num_eval_pairs, seed + (split == "test"))
        cond = np.array([conditions.index(tuple(sorted((categories[a], categories[b]))))
                         if tuple(sorted((categories[a], categories[b]))) in conditions else -1 for a, b in pairs])
        sets[split] = PairSet(_images(source, size, progress), pairs, labels, cond)
    preprocess = Preprocess(image_size=size, keys=("condition", "category", "outfit"), image_keys=("anchor", "positive"))
    return SimilarityData(train, preprocess, "outfits", size, sets["validation"], sets["test"], len(conditions))


@dataclasses.dataclass
class PairList:
    """Pairs to explain as indices into a split's source, whose images are read only where needed
    (``data.shards.read_pair_shard``, or ``read_images``)."""

    source: object  # the split's tfds data source: records with "image" (uint8), shapes also "key_mask", "scene"
    pairs: np.ndarray  # [P, 2] indices into source
    labels: np.ndarray  # [P] 1 = positive pair
    preprocess: Preprocess  # a record's image -> model-ready (resized for the real datasets, normalised)
    image_size: Optional[int]  # None: the native size (shapes)
    conditions: Optional[np.ndarray] = None  # [P] type-aware models (-1: the general space)
    query_keys: tuple = ()  # per-image ground truth the source holds ("key_mask", "scene" on shapes)


@dataclasses.dataclass
class ExplanationPairs:
    """Pairs to explain: uint8 images at model resolution, index pairs, labels, and (shapes only)
    the key-object masks; ``conditions`` for type-aware models."""

    images: np.ndarray
    pairs: np.ndarray
    labels: np.ndarray
    key_masks: Optional[np.ndarray] = None
    conditions: Optional[np.ndarray] = None
    scenes: Optional[list] = None  # shapes: each image's scene JSON


def _metadata_source(builder, split: str):
    """The split with its images left encoded: ids, labels and categories read without decoding pixels."""
    skip = {name: tfds.decode.SkipDecoding() for name, feature in builder.info.features.items()
            if isinstance(feature, tfds.features.Image)}
    return builder.as_data_source(split, decoders=skip)


def _first_balanced(pairs: np.ndarray, labels: np.ndarray, num_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``num_pairs // 2`` positive and ``num_pairs - num_pairs // 2`` negative pairs, in list order."""
    keep = np.sort(np.concatenate([np.flatnonzero(labels == 1)[: num_pairs // 2],
                                   np.flatnonzero(labels == 0)[: num_pairs - num_pairs // 2]]))
    return pairs[keep], labels[keep]


def explanation_pair_list(dataset: str, *, data_dir: str, manual_dir: str = "", split: str = "test",
                          num_pairs: int = 100, seed: int = 0, test_pairs: str = "") -> PairList:
    """Balanced pairs of one split: sampled, or the first ``num_pairs // 2`` positives and
    negatives of ``test_pairs`` (a pair file or ``"reference:NAME"``); no image is decoded."""
    check_dataset(dataset, manual_dir, test_pairs)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder = tfds.builder(dataset, data_dir=data_dir)
    builder.download_and_prepare(download_config=download_config)
    source, meta = builder.as_data_source(split), _metadata_source(builder, split)
    name = dataset.split("/")[0]
    if name == "shapes":
        if test_pairs:
            pairs, labels = _first_balanced(*_listed_pairs(test_pairs, [meta[i]["image_id"].decode()
                                                                        for i in range(len(meta))]), num_pairs)
        else:
            pairs, labels = _sampled_pairs(load_arrays(meta, ["label"])["label"], num_pairs, seed)
        return PairList(source, pairs, labels, Preprocess(keys=()), None, query_keys=("key_mask", "scene"))
    records = [{k: v for k, v in meta[i].items() if k != "image"} for i in range(len(meta))]  # no encoded bytes kept
    ids = [r["image_id" if name == "awa2" else "item_id"].decode() for r in records]
    if test_pairs:
        pairs, labels = _first_balanced(*_listed_pairs(test_pairs, ids), num_pairs)
    elif name == "awa2":
        pairs, labels = _sampled_pairs(np.array([r["label"] for r in records]), num_pairs, seed)
    else:
        pairs, labels = _sampled_pairs([r["outfits"][0].decode() if len(r["outfits"]) else str(i)
                                        for i, r in enumerate(records)], num_pairs, seed)
    conditions = None
    if name == "polyvore_outfits":
        table = [tuple(c) for c in builder.info.metadata["type_conditions"]]
        kinds = [tuple(sorted((records[a]["category"].decode(), records[b]["category"].decode()))) for a, b in pairs]
        conditions = np.array([table.index(k) if k in table else -1 for k in kinds])
    return PairList(source, pairs, labels, Preprocess(image_size=PAPER_IMAGE_SIZE, keys=()), PAPER_IMAGE_SIZE,
                    conditions)


def read_images(source, indices, image_size: Optional[int], records=None) -> np.ndarray:
    """uint8 images ``[len(indices), H, W, 3]`` of ``source`` at model resolution (``records``:
    those already read)."""
    records = records if records is not None else [source[int(i)] for i in indices]
    images = [np.asarray(r["image"]) for r in records]
    return np.stack([im if image_size is None else resize_and_center_crop(im, image_size) for im in images])


def explanation_pairs(dataset: str, *, data_dir: str, manual_dir: str = "", split: str = "test",
                      num_pairs: int = 100, seed: int = 0, test_pairs: str = "") -> ExplanationPairs:
    """``explanation_pair_list`` with the images its pairs use loaded (``pairs`` index ``images``)."""
    listed = explanation_pair_list(dataset, data_dir=data_dir, manual_dir=manual_dir, split=split,
                                   num_pairs=num_pairs, seed=seed, test_pairs=test_pairs)
    used, pairs = np.unique(listed.pairs, return_inverse=True)
    pairs = pairs.reshape(listed.pairs.shape)
    records = [listed.source[int(u)] for u in used]
    key_masks = scenes = None
    if listed.query_keys:
        key_masks = np.stack([r["key_mask"] for r in records])
        scenes = [r["scene"].decode() for r in records]
    return ExplanationPairs(read_images(listed.source, used, listed.image_size, records), pairs, listed.labels,
                            key_masks, listed.conditions, scenes)


@dataclasses.dataclass
class AttributeSplit:
    images: np.ndarray  # uint8 [N, H, W, 3] at model resolution
    attributes: np.ndarray  # bool [N, A]
    groups: np.ndarray  # [N]: class label, or the first outfit (Polyvore), for positive references
    ids: list


def attribute_splits(dataset: str, *, data_dir: str, manual_dir: str = "") -> dict[str, AttributeSplit]:
    """Train / validation / test images with attribute labels, for the attribute predictor."""
    check_dataset(dataset, manual_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder = tfds.builder(dataset, data_dir=data_dir)
    builder.download_and_prepare(download_config=download_config)
    name = dataset.split("/")[0]
    out = {}
    for split in ("train", "validation", "test"):
        source = builder.as_data_source(split)
        if name == "shapes":
            arrays = load_arrays(source, ["image", "attributes", "label", "image_id"])
            out[split] = AttributeSplit(arrays["image"], arrays["attributes"], arrays["label"],
                                        [i.decode() for i in arrays["image_id"]])
            continue
        id_key = "image_id" if name == "awa2" else "item_id"
        records = [source[i] for i in range(len(source))]
        groups = [r["label"] if name == "awa2" else (r["outfits"][0].decode() if len(r["outfits"]) else str(i))
                  for i, r in enumerate(records)]
        _, group_ids = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
        out[split] = AttributeSplit(
            np.stack([resize_and_center_crop(np.asarray(r["image"]), PAPER_IMAGE_SIZE) for r in records]),
            np.stack([r["attributes"] for r in records]), group_ids, [r[id_key].decode() for r in records])
    return out
