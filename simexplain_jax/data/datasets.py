"""The datasets by name: each function finds the dataset's adapter (``registry.get``), checks its
arguments, prepares the dataset (built in ``data_dir`` on first use) and asks the adapter.

``test_pairs`` is a pair file of image ids, or ``"reference:NAME"`` for a packaged one
(``reference_files``); empty: balanced pairs are sampled.
"""

from __future__ import annotations

import numpy as np

from simexplain_jax.data import registry
from simexplain_jax.data.adapter import (AttributeSplit, ExplanationPairs, PairList, PairSet, SimilarityData,
                                         read_images)

__all__ = ["AttributeSplit", "ExplanationPairs", "PairList", "PairSet", "SimilarityData", "attribute_splits",
           "check_dataset", "explanation_pair_list", "explanation_pairs", "read_images", "similarity_data"]


def check_dataset(dataset: str, manual_dir: str = "", test_pairs: str = "") -> None:
    """Fails fast, naming the argument, on an unknown dataset, a missing manual folder or a
    ``test_pairs`` that is neither a packaged pair list nor an existing file.

    Args:
      dataset: a name of ``registry.names()``.
      manual_dir: the folder the user downloaded (datasets with a manual download).
      test_pairs: a pair file, ``"reference:NAME"``, or empty.
    """
    registry.get(dataset).check(manual_dir, test_pairs)


def _prepared(dataset: str, data_dir: str, manual_dir: str, test_pairs: str = ""):
    adapter = registry.get(dataset)
    adapter.check(manual_dir, test_pairs)
    return adapter, adapter.prepare(data_dir, manual_dir)


def similarity_data(dataset: str, *, data_dir: str, manual_dir: str = "", num_eval_pairs: int = 2000, seed: int = 0,
                    test_pairs: str = "", progress: bool = False) -> SimilarityData:
    """Training data and validation / test pairs for similarity training.

    Args:
      dataset: a name of ``registry.names()``.
      data_dir: the TFDS data folder.
      manual_dir: the folder the user downloaded (datasets with a manual download).
      num_eval_pairs: balanced pairs sampled per evaluation split.
      seed: the validation pairs' sampling seed (``seed + 1`` for test).
      test_pairs: the test pairs (a pair file or ``"reference:NAME"``); empty: sampled.
      progress: show a progress bar while images are decoded.

    Returns:
      A ``SimilarityData``.
    """
    adapter, builder = _prepared(dataset, data_dir, manual_dir, test_pairs)
    return adapter.similarity_data(builder, num_eval_pairs=num_eval_pairs, seed=seed, test_pairs=test_pairs,
                                   progress=progress)


def explanation_pair_list(dataset: str, *, data_dir: str, manual_dir: str = "", split: str = "test",
                          num_pairs: int = 100, seed: int = 0, test_pairs: str = "") -> PairList:
    """Balanced pairs of one split to explain; no image is decoded.

    Args:
      dataset: a name of ``registry.names()``.
      data_dir: the TFDS data folder.
      manual_dir: the folder the user downloaded (datasets with a manual download).
      split: the split the pairs come from.
      num_pairs: how many pairs (half positive).
      seed: the sampling seed.
      test_pairs: a pair file or ``"reference:NAME"``, whose first ``num_pairs // 2`` positives and
        negatives are taken; empty: sampled.

    Returns:
      A ``PairList``.
    """
    adapter, builder = _prepared(dataset, data_dir, manual_dir, test_pairs)
    return adapter.pair_list(builder, split=split, num_pairs=num_pairs, seed=seed, test_pairs=test_pairs)


def explanation_pairs(dataset: str, *, data_dir: str, manual_dir: str = "", split: str = "test",
                      num_pairs: int = 100, seed: int = 0, test_pairs: str = "") -> ExplanationPairs:
    """``explanation_pair_list`` with the images its pairs use loaded.

    Returns:
      An ``ExplanationPairs`` whose ``pairs`` index its ``images``.
    """
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


def attribute_splits(dataset: str, *, data_dir: str, manual_dir: str = "") -> dict[str, AttributeSplit]:
    """Train / validation / test images with attribute labels, for the attribute predictor.

    Args:
      dataset: a name of ``registry.names()``.
      data_dir: the TFDS data folder.
      manual_dir: the folder the user downloaded (datasets with a manual download).

    Returns:
      ``{split: AttributeSplit}``.
    """
    adapter, builder = _prepared(dataset, data_dir, manual_dir)
    return {split: adapter.attribute_split(builder, split) for split in ("train", "validation", "test")}


def attribute_names(dataset: str, *, data_dir: str, manual_dir: str = "") -> list[str]:
    """The dataset's attribute names, in the order of its attribute labels.

    Args:
      dataset: a name of ``registry.names()``.
      data_dir: the TFDS data folder.
      manual_dir: the folder the user downloaded (datasets with a manual download).

    Returns:
      One name per attribute.
    """
    adapter, builder = _prepared(dataset, data_dir, manual_dir)
    return adapter.attribute_names(builder)
