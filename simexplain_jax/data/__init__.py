"""Datasets, pairs and the input pipeline. Importing this package registers the TFDS builders
``shapes``, ``awa2`` and ``polyvore_outfits``. ``reference_files`` gives the SANE pair lists and
Polyvore attribute names that ship with the package."""

from simexplain_jax.data import pairs, reference_files, shapes
from simexplain_jax.data._manual import ManualDataError
from simexplain_jax.data.tfds_awa2 import Awa2
from simexplain_jax.data.tfds_polyvore import PolyvoreOutfits
from simexplain_jax.data.tfds_shapes import Shapes

__all__ = ["pairs", "reference_files", "shapes", "ManualDataError", "Awa2", "PolyvoreOutfits", "Shapes"]
