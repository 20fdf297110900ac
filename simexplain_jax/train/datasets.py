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
from simexplain_jax.data.pipeline import PAPER_IMAGE_SIZE, Preprocess, resize_and_center_crop
from simexplain_jax.data.sources import InMemorySource, OutfitPairSource, load_arrays

DATASETS = ("shapes/32px", "shapes/64px", "shapes/112px", "awa2", "polyvore_outfits/nondisjoint",
            "polyvore_outfits/disjoint")
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


def check_dataset(dataset: str, manual_dir: str) -> None:
    """Fails fast with a clear message for an unknown dataset or a missing manual folder."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if dataset.split("/")[0] in MANUAL and (not manual_dir or not os.path.isdir(manual_dir)):
        raise FileNotFoundError(f"dataset {dataset!r} needs config.manual_dir, the folder you downloaded "
                                f"(got {manual_dir!r}); see the README's Datasets section")


def _images(source, size: Optional[int], progress: bool) -> np.ndarray:
    images = load_arrays(source, ["image"], progress)["image"]
    if size is not None:
        images = np.stack([resize_and_center_crop(im, size) for im in images])
    return images


def _sampled_pairs(labels, num_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    sampled = pairs_lib.sample_pairs(labels, num_pairs, seed)
    return np.array([[int(p.query), int(p.reference)] for p in sampled]), np.array([p.label for p in sampled])


def _listed_pairs(path: str, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    index = {image_id: i for i, image_id in enumerate(ids)}
    listed = pairs_lib.read_pairs(path)
    missing = [p for p in listed if p.query not in index or p.reference not in index]
    if missing:
        raise ValueError(f"{path}: {len(missing)} pairs name images that are not in the split (e.g. {missing[0]})")
    return (np.array([[index[p.query], index[p.reference]] for p in listed]), np.array([p.label for p in listed]))


def similarity_data(dataset: str, *, data_dir: str, manual_dir: str = "", num_eval_pairs: int = 2000, seed: int = 0,
                    test_pairs: str = "", progress: bool = False) -> SimilarityData:
    """See the module docstring. ``test_pairs``: a reference pair file (ids) for the test set;
    empty: ``num_eval_pairs`` balanced pairs sampled from the test split."""
    check_dataset(dataset, manual_dir)
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
            arrays = load_arrays(source, ["image", "label"], progress)
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
class ExplanationPairs:
    """Pairs to explain: uint8 images at model resolution, index pairs, labels, and (shapes only)
    the key-object masks; ``conditions`` for type-aware models."""

    images: np.ndarray
    pairs: np.ndarray
    labels: np.ndarray
    key_masks: Optional[np.ndarray] = None
    conditions: Optional[np.ndarray] = None
    scenes: Optional[list] = None  # shapes: each image's scene JSON


def explanation_pairs(dataset: str, *, data_dir: str, manual_dir: str = "", split: str = "test",
                      num_pairs: int = 100, seed: int = 0, test_pairs: str = "") -> ExplanationPairs:
    """Balanced pairs (or a reference pair file) of one split, with what evaluation needs."""
    check_dataset(dataset, manual_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder = tfds.builder(dataset, data_dir=data_dir)
    builder.download_and_prepare(download_config=download_config)
    source = builder.as_data_source(split)
    name = dataset.split("/")[0]
    if name == "shapes":
        arrays = load_arrays(source, ["image", "label", "key_mask", "scene"])
        pairs, labels = _sampled_pairs(arrays["label"], num_pairs, seed)
        return ExplanationPairs(arrays["image"], pairs, labels, arrays["key_mask"],
                                scenes=[s.decode() for s in arrays["scene"]])
    id_key = "image_id" if name == "awa2" else "item_id"
    ids = [source[i][id_key].decode() for i in range(len(source))]
    if test_pairs:
        pairs, labels = _listed_pairs(test_pairs, ids)
        keep = np.concatenate([np.flatnonzero(labels == 1)[: num_pairs // 2],
                               np.flatnonzero(labels == 0)[: num_pairs - num_pairs // 2]])  # balanced, in file order
        pairs, labels = pairs[np.sort(keep)], labels[np.sort(keep)]
    elif name == "awa2":
        pairs, labels = _sampled_pairs(load_arrays(source, ["label"])["label"], num_pairs, seed)
    else:
        outfit_of = [source[i]["outfits"][0].decode() if len(source[i]["outfits"]) else str(i)
                     for i in range(len(source))]
        pairs, labels = _sampled_pairs(outfit_of, num_pairs, seed)
    used = np.unique(pairs)
    remap = {int(u): k for k, u in enumerate(used)}
    images = np.stack([resize_and_center_crop(np.asarray(source[int(u)]["image"]), PAPER_IMAGE_SIZE) for u in used])
    conditions = None
    if name == "polyvore_outfits":
        table = [tuple(c) for c in builder.info.metadata["type_conditions"]]
        categories = {int(u): source[int(u)]["category"].decode() for u in used}
        conditions = np.array([table.index(tuple(sorted((categories[a], categories[b]))))
                               if tuple(sorted((categories[a], categories[b]))) in table else -1 for a, b in pairs])
    pairs = np.vectorize(remap.get)(pairs)
    return ExplanationPairs(images, pairs, labels, None, conditions)


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
