"""The synthetic shapes benchmark: class-labelled scenes at their native size, with key-object
masks and scene descriptions for pointing scores."""

from __future__ import annotations

from simexplain_jax.data.adapter import AttributeSplit, DatasetAdapter
from simexplain_jax.data.pipeline import Preprocess
from simexplain_jax.data.registry import register
from simexplain_jax.data.sources import InMemorySource, load_arrays
from simexplain_jax.data.tfds_shapes import Shapes


@register("shapes")
class ShapesAdapter(DatasetAdapter):
    """The shapes benchmark (built on first use); its small splits are decoded once into memory."""

    builder_class = Shapes
    image_size = None
    query_keys = ("key_mask", "scene")

    def group(self, record, index):
        return record["label"]

    def training(self, builder, progress=False):
        train = InMemorySource(load_arrays(self.source(builder, "train"), ["image", "label"], progress))
        return train, Preprocess(keys=("label",)), "labels", 0

    def attribute_split(self, builder, split):
        arrays = load_arrays(self.source(builder, split), ["image", "attributes", "label", "image_id", "scene"])
        return AttributeSplit(arrays["image"], arrays["attributes"], arrays["label"],
                              [i.decode() for i in arrays["image_id"]], [t.decode() for t in arrays["scene"]])
