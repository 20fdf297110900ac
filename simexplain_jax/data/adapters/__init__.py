"""The dataset adapters that ship with the package; importing this package registers them."""

from simexplain_jax.data.adapters.awa2 import Awa2Adapter
from simexplain_jax.data.adapters.folder import FolderAdapter
from simexplain_jax.data.adapters.polyvore import PolyvoreAdapter
from simexplain_jax.data.adapters.shapes import ShapesAdapter

__all__ = ["Awa2Adapter", "FolderAdapter", "PolyvoreAdapter", "ShapesAdapter"]
