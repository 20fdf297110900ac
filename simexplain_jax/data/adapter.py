"""The dataset adapter: what the experiments need from one dataset, and the records it gives.

A ``DatasetAdapter`` subclass, registered by name (``registry.register``), gives a dataset's
similarity-training data (``similarity_data``), the pairs to explain (``pair_list``) and the
attribute splits (``attribute_splits``), and checks its arguments before anything is built
(``check``). The base class holds what the datasets share: preparing a TFDS builder, sampling
balanced pairs from each record's group or reading them from a pair file, and reading images at
model resolution. A subclass names its builder, its id field and each record's group; it
overrides a method where its data differ (the Polyvore outfits' pairs and type conditions, the
shapes benchmark's in-memory splits).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Hashable, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from simexplain_jax.data import pairs as pairs_lib
from simexplain_jax.data import reference_files
from simexplain_jax.data.pipeline import PAPER_IMAGE_SIZE, Preprocess, resize_and_center_crop
from simexplain_jax.data.sources import CheckedSource, load_arrays

EVALUATION_SPLITS = ("validation", "test")
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class PairSet:
    """Images with index pairs and their labels, for pair-verification AUC.

    ``images`` are uint8 ``[N, H, W, 3]`` at model resolution, ``pairs [P, 2]`` index them,
    ``labels [P]`` are 1 for a matching pair; ``conditions [P]`` (type-aware models) give each
    pair's type condition, -1 where the two items share a category (the general space).
    """

    images: np.ndarray
    pairs: np.ndarray
    labels: np.ndarray
    conditions: Optional[np.ndarray] = None


@dataclasses.dataclass
class SimilarityData:
    """What similarity training needs: a random-access training source and its preprocessing for
    grain, the batch kind (``"labels"`` or ``"outfits"``), the model's image size, validation and
    test ``PairSet``s and the number of type conditions (0: not type-aware)."""

    train_source: object
    preprocess: Preprocess
    batch_kind: str
    image_size: int
    validation: PairSet
    test: PairSet
    num_conditions: int = 0


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


@dataclasses.dataclass
class AttributeSplit:
    """Images with attribute labels, for the attribute predictor."""

    images: np.ndarray  # uint8 [N, H, W, 3] at model resolution
    attributes: np.ndarray  # bool [N, A]
    groups: np.ndarray  # [N]: class label, or the first outfit (Polyvore), for positive references
    ids: list
    scenes: Optional[list] = None  # shapes: each image's scene JSON (counterfactual edits re-render them)


def read_images(source, indices, image_size: Optional[int], records=None) -> np.ndarray:
    """Images of a source at model resolution.

    Args:
      source: a random-access source of records with an ``"image"`` (uint8).
      indices: the records to read.
      image_size: the model's input size (resized and centre-cropped); None keeps the native size.
      records: the records at ``indices``, when already read.

    Returns:
      uint8 ``[len(indices), H, W, 3]``.
    """
    records = records if records is not None else [source[int(i)] for i in indices]
    images = [np.asarray(r["image"]) for r in records]
    return np.stack([im if image_size is None else resize_and_center_crop(im, image_size) for im in images])


def sampled_pairs(groups: Sequence[Hashable], num_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs [P, 2], labels [P])``: balanced pairs of indices, positive where the groups agree."""
    sampled = pairs_lib.sample_pairs(groups, num_pairs, seed)
    return np.array([[int(p.query), int(p.reference)] for p in sampled]), np.array([p.label for p in sampled])


def listed_pairs(path: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of ``path`` (a file or ``"reference:NAME"``) as indices into ``ids``, with labels."""
    index = {image_id: i for i, image_id in enumerate(ids)}
    listed = reference_files.read_pair_file(path, "test_pairs")
    missing = [p for p in listed if p.query not in index or p.reference not in index]
    if missing:
        raise ValueError(f"{path}: {len(missing)} pairs name images that are not in the split (e.g. {missing[0]})")
    return (np.array([[index[p.query], index[p.reference]] for p in listed]), np.array([p.label for p in listed]))


def first_balanced(pairs: np.ndarray, labels: np.ndarray, num_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``num_pairs // 2`` positive and ``num_pairs - num_pairs // 2`` negative pairs, in list order."""
    keep = np.sort(np.concatenate([np.flatnonzero(labels == 1)[: num_pairs // 2],
                                   np.flatnonzero(labels == 0)[: num_pairs - num_pairs // 2]]))
    return pairs[keep], labels[keep]


class DatasetAdapter:
    """One dataset, as the experiments use it.

    Subclasses set ``builder_class`` (the TFDS builder, whose configs name the datasets
    ``name/config``), ``manual`` (the data come from a folder the user downloaded), ``id_key``
    (the record field holding an image's id, as pair files name it) and ``image_size`` (the
    model's input size; None keeps the native size), and define ``group``, ``training`` and,
    for type-aware data, ``pair_conditions``.

    Args:
      dataset: the dataset name (``name`` or ``name/config``).
    """

    builder_class: type = None
    manual: bool = False
    id_key: str = "image_id"
    image_size: Optional[int] = PAPER_IMAGE_SIZE
    query_keys: tuple = ()

    def __init__(self, dataset: str):
        self.dataset = dataset

    @classmethod
    def dataset_names(cls, name: str) -> tuple[str, ...]:
        """The dataset names this adapter serves under ``name``: one per builder config."""
        configs = getattr(cls.builder_class, "BUILDER_CONFIGS", None) or []
        return tuple(f"{name}/{config.name}" for config in configs) or (name,)

    # ---- what a subclass defines ------------------------------------------------------------

    def group(self, record: dict, index: int) -> Hashable:
        """A record's group: records of one group make positive pairs."""
        raise NotImplementedError

    def training(self, builder, progress: bool = False) -> tuple[object, Preprocess, str, int]:
        """``(train_source, preprocess, batch_kind, num_conditions)`` for similarity training."""
        raise NotImplementedError

    def pair_conditions(self, builder, records: Sequence[dict], pairs: np.ndarray) -> Optional[np.ndarray]:
        """Each pair's type condition (-1: none), or None for data without type conditions."""
        return None

    # ---- shared -----------------------------------------------------------------------------

    def check(self, manual_dir: str = "", test_pairs: str = "") -> None:
        """Fails fast, before anything is built, on a missing manual folder or a ``test_pairs``
        that is neither a packaged pair list nor an existing file."""
        if self.manual and (not manual_dir or not os.path.isdir(manual_dir)):
            raise FileNotFoundError(f"dataset {self.dataset!r} needs config.manual_dir, the folder you downloaded "
                                    f"(got {manual_dir!r}); see the README's Datasets section")
        if test_pairs:
            reference_files.check_pair_file(test_pairs, "test_pairs")

    def prepare(self, data_dir: str, manual_dir: str = ""):
        """The dataset's TFDS builder, built in ``data_dir`` unless it is there already."""
        download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
        builder = tfds.builder(self.dataset, data_dir=data_dir)
        builder.download_and_prepare(download_config=download_config)
        return builder

    def source(self, builder, split: str, decoders=None) -> CheckedSource:
        """The random-access source of ``split``, whose read errors name the dataset's folder."""
        return CheckedSource(builder.as_data_source(split, decoders=decoders), f"{builder.data_dir}, split {split}")

    def metadata_records(self, builder, split: str) -> list[dict]:
        """Every record of ``split`` without its images (nothing is decoded)."""
        skip = {name: tfds.decode.SkipDecoding() for name, feature in builder.info.features.items()
                if isinstance(feature, tfds.features.Image)}
        source = self.source(builder, split, decoders=skip)
        return [{k: v for k, v in source[i].items() if k not in skip} for i in range(len(source))]

    def ids(self, records: Sequence[dict]) -> list[str]:
        return [r[self.id_key].decode() for r in records]

    def groups(self, records: Sequence[dict]) -> list:
        return [self.group(r, i) for i, r in enumerate(records)]

    def _images(self, source, progress: bool) -> np.ndarray:
        images = load_arrays(source, ["image"], progress)["image"]
        if self.image_size is not None:
            images = np.stack([resize_and_center_crop(im, self.image_size) for im in images])
        return images

    def similarity_data(self, builder, *, num_eval_pairs: int = 2000, seed: int = 0, test_pairs: str = "",
                        progress: bool = False) -> SimilarityData:
        """Training data and validation / test pairs: ``num_eval_pairs`` balanced pairs sampled per
        split (seed ``seed``, and ``seed + 1`` for test), or the pairs of ``test_pairs`` for test."""
        sets = {}
        for split in EVALUATION_SPLITS:
            records = self.metadata_records(builder, split)
            if split == "test" and test_pairs:
                pairs, labels = listed_pairs(test_pairs, self.ids(records))
            else:
                pairs, labels = sampled_pairs(self.groups(records), num_eval_pairs, seed + (split == "test"))
            images = self._images(self.source(builder, split), progress)
            sets[split] = PairSet(images, pairs, labels, self.pair_conditions(builder, records, pairs))
        train_source, preprocess, batch_kind, num_conditions = self.training(builder, progress)
        size = self.image_size or builder.info.features["image"].shape[0]
        return SimilarityData(train_source, preprocess, batch_kind, size, sets["validation"], sets["test"],
                              num_conditions)

    def pair_list(self, builder, *, split: str = "test", num_pairs: int = 100, seed: int = 0,
                  test_pairs: str = "") -> PairList:
        """Balanced pairs of ``split``: sampled, or the first ``num_pairs // 2`` positives and
        negatives of ``test_pairs``; no image is decoded."""
        records = self.metadata_records(builder, split)
        if test_pairs:
            pairs, labels = first_balanced(*listed_pairs(test_pairs, self.ids(records)), num_pairs)
        else:
            pairs, labels = sampled_pairs(self.groups(records), num_pairs, seed)
        return PairList(self.source(builder, split), pairs, labels, Preprocess(image_size=self.image_size, keys=()),
                        self.image_size, self.pair_conditions(builder, records, pairs), self.query_keys)

    def attribute_names(self, builder) -> list[str]:
        """The attribute names, in the order of the records' ``"attributes"`` labels."""
        names = builder.info.metadata.get("attribute_names") if builder.info.metadata else None
        if not names:
            raise ValueError(f"dataset {self.dataset!r} has no attribute names in its metadata "
                             f"({builder.data_dir}); it cannot train or explain attributes")
        return [str(n) for n in names]

    def attribute_split(self, builder, split: str) -> AttributeSplit:
        """The images of ``split`` with their attribute labels, groups (numbered by sorted name)
        and ids."""
        source = self.source(builder, split)
        records = [source[i] for i in range(len(source))]
        _, group_ids = np.unique(np.asarray(self.groups(records), dtype=object).astype(str), return_inverse=True)
        return AttributeSplit(read_images(source, range(len(records)), self.image_size, records),
                              np.stack([r["attributes"] for r in records]), group_ids, self.ids(records))
