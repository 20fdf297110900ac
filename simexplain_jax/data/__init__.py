"""Datasets, pairs and the input pipeline.

Importing this package registers the TFDS builders ``shapes``, ``awa2``, ``polyvore_outfits`` and
``attribute_folder`` (your own images with an attributes.csv) and their adapters. ``register(name)`` adds a dataset adapter (``adapter.DatasetAdapter``),
``get(dataset)`` gives the adapter of a dataset name and ``names()`` lists them; ``datasets``
holds the functions the experiments call by dataset name. ``reference_files`` gives the SANE pair
lists and Polyvore attribute names that ship with the package.
"""

from simexplain_jax.data import adapters, pairs, reference_files, shapes
from simexplain_jax.data._manual import ManualDataError
from simexplain_jax.data.adapter import DatasetAdapter
from simexplain_jax.data.registry import get, names, register, registered
from simexplain_jax.data.tfds_awa2 import Awa2
from simexplain_jax.data.tfds_folder import AttributeFolder
from simexplain_jax.data.tfds_polyvore import PolyvoreOutfits
from simexplain_jax.data.tfds_shapes import Shapes

__all__ = ["adapters", "pairs", "reference_files", "shapes", "ManualDataError", "DatasetAdapter", "get", "names",
           "register", "registered", "AttributeFolder", "Awa2", "PolyvoreOutfits", "Shapes"]
