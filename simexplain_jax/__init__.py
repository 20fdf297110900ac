"""simexplain_jax: explain why an image-similarity model thinks two images match.

>>> import simexplain_jax as sx
>>> sal = sx.saliency.rise(embed_fn, query, reference_embedding, key=jax.random.key(0)).maps  # doctest: +SKIP

``sx.data`` (TFDS builders, pairs, pipeline), ``sx.models`` and ``sx.viz`` are imported on first use.
"""

import importlib

from simexplain_jax import attributes, masks, metrics, saliency, similarity

__version__ = "0.1.0"
__all__ = ["attributes", "masks", "metrics", "saliency", "similarity", "data", "models", "viz", "parallel"]
_LAZY = ("data", "models", "viz", "parallel")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"simexplain_jax.{name}")
    raise AttributeError(f"module 'simexplain_jax' has no attribute {name!r}")
