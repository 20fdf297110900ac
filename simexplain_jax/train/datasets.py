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
