"""Animals with Attributes 2: class-labelled images; pairs of one class match."""

from __future__ import annotations

from simexplain_jax.data.adapter import DatasetAdapter
from simexplain_jax.data.pipeline import Preprocess
from simexplain_jax.data.registry import register
from simexplain_jax.data.tfds_awa2 import Awa2


@register("awa2")
class Awa2Adapter(DatasetAdapter):
    """AwA2 from the user's download, at the paper's resolution."""

    builder_class = Awa2
    manual = True

    def group(self, record, index):
        return record["label"]

    def training(self, builder, progress=False):
        return (self.source(builder, "train"), Preprocess(image_size=self.image_size, keys=("label",)),
                "labels", 0)
