"""simexplain_jax: explain why an image-similarity model thinks two images match.

>>> import simexplain_jax as sx
>>> sal = sx.saliency.rise(embed_fn, query, reference_embedding, key=jax.random.key(0)).maps  # doctest: +SKIP

Every subpackage (``sx.saliency``, ``sx.metrics``, ``sx.data``, ``sx.models``, ...) is imported on
first use, so ``import simexplain_jax`` itself loads nothing heavy (no JAX, Flax or scikit-image).
"""

import importlib

__version__ = "0.1.0"
__all__ = ["attributes", "masks", "metrics", "saliency", "similarity", "data", "models", "viz", "parallel"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"simexplain_jax.{name}")
    raise AttributeError(f"module 'simexplain_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
