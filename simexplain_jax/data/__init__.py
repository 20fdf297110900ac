"""Datasets, pairs and the input pipeline. Importing this package registers the TFDS builders
``shapes``, ``awa2`` and ``polyvore_outfits``."""

from simexplain_jax.data import pairs, shapes
from simexplain_jax.data._manual import ManualDataError
from simexplain_jax.data.tfds_awa2 import Awa2
from simexplain_jax.data.tfds_polyvore import PolyvoreOutfits
from simexplain_jax.data.tfds_shapes import Shapes

__all__ = ["pairs", "shapes", "ManualDataError", "Awa2", "PolyvoreOutfits", "Shapes"]
