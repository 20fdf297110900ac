"""Your own folder of images with an attributes.csv (``tfds_folder``): images of one label match."""

from __future__ import annotations

import os

import numpy as np

from simexplain_jax.data.adapter import AttributeSplit, DatasetAdapter
from simexplain_jax.data.pipeline import Preprocess
from simexplain_jax.data.registry import register
from simexplain_jax.data.sources import InMemorySource, load_arrays
from simexplain_jax.data.tfds_folder import AttributeFolder


@register("attribute_folder")
class FolderAdapter(DatasetAdapter):
    """A user's image folder, stored at the config's size (``attribute_folder/64px``, ...); its
    splits are decoded once into memory, as the shapes benchmark's.

    Sampled pairs need the ``label`` column (images of one label match); without it, give the
    pairs in a file (``test_pairs``). Similarity training needs labels.
    """

    builder_class = AttributeFolder
    manual = True
    image_size = None  # stored at the model's size

    def group(self, record, index):
        label = record["label"].decode() if isinstance(record["label"], bytes) else str(record["label"])
        return label if label else f"image {index}"  # no label: every image its own group

    def check(self, manual_dir: str = "", test_pairs: str = "") -> None:
        if not manual_dir or not os.path.isfile(os.path.join(manual_dir, "attributes.csv")):
            raise FileNotFoundError(f"dataset {self.dataset!r} needs config.manual_dir, your image folder with an "
                                    f"attributes.csv (got {manual_dir!r})")
        super().check(manual_dir, test_pairs)

    def _need_labels(self, builder, what: str) -> None:
        if not builder.info.metadata.get("has_labels"):
            raise ValueError(f"dataset {self.dataset!r}: {what} needs the 'label' column of attributes.csv (images "
                             "of one label match)")

    def similarity_data(self, builder, **kwargs):
        self._need_labels(builder, "similarity training")
        return super().similarity_data(builder, **kwargs)

    def pair_list(self, builder, *, test_pairs: str = "", **kwargs):
        if not test_pairs:
            self._need_labels(builder, "sampling pairs (or give a pair file, test_pairs)")
        return super().pair_list(builder, test_pairs=test_pairs, **kwargs)

    def training(self, builder, progress=False):
        self._need_labels(builder, "similarity training")
        arrays = load_arrays(self.source(builder, "train"), ["image", "label"], progress)
        names = list(builder.info.metadata["labels"])
        labels = np.asarray([names.index(label.decode()) for label in arrays["label"]], np.int64)
        return InMemorySource({"image": arrays["image"], "label": labels}), Preprocess(keys=("label",)), "labels", 0

    def attribute_split(self, builder, split):
        arrays = load_arrays(self.source(builder, split), ["image", "attributes", "label", "image_id"])
        ids = [i.decode() for i in arrays["image_id"]]
        groups = [self.group({"label": label}, i) for i, label in enumerate(arrays["label"])]
        _, group_ids = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
        return AttributeSplit(arrays["image"], arrays["attributes"].astype(bool), group_ids, ids)
