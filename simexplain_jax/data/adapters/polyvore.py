"""Polyvore Outfits: items of one outfit match, each pair compared under its type condition."""

from __future__ import annotations

import numpy as np

from simexplain_jax.data.adapter import DatasetAdapter
from simexplain_jax.data.pipeline import Preprocess
from simexplain_jax.data.registry import register
from simexplain_jax.data.sources import OutfitPairSource
from simexplain_jax.data.tfds_polyvore import PolyvoreOutfits, condition_index


def builder_conditions(builder) -> list[tuple[str, str]]:
    """The type conditions a Polyvore builder recorded, as sorted category tuples."""
    return [tuple(c) for c in builder.info.metadata["type_conditions"]]


@register("polyvore_outfits")
class PolyvoreAdapter(DatasetAdapter):
    """Polyvore Outfits from the user's download, at the paper's resolution; type-aware."""

    builder_class = PolyvoreOutfits
    manual = True
    id_key = "item_id"

    def group(self, record, index):
        return record["outfits"][0].decode() if len(record["outfits"]) else str(index)

    def pair_conditions(self, builder, records, pairs):
        conditions = builder_conditions(builder)
        return np.array([condition_index(conditions, records[a]["category"].decode(),
                                         records[b]["category"].decode(), default=-1) for a, b in pairs])

    def training(self, builder, progress=False):
        conditions = builder_conditions(builder)
        preprocess = Preprocess(image_size=self.image_size, keys=("condition", "category", "outfit"),
                                image_keys=("anchor", "positive"))
        return OutfitPairSource(self.source(builder, "train"), conditions), preprocess, "outfits", len(conditions)
