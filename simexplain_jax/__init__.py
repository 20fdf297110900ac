"""simexplain_jax: explain why an image-similarity model thinks two images match.

>>> import simexplain_jax as sx
>>> sal = sx.saliency.rise(embed_fn, query, reference_embedding, key=jax.random.key(0))  # doctest: +SKIP
"""

from simexplain_jax import masks, metrics, saliency, similarity

__version__ = "0.1.0"
__all__ = ["masks", "metrics", "saliency", "similarity"]
