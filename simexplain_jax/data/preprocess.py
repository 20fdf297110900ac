"""Image preprocessing (re-exported from ``simexplain_jax.imageops``, which the library core uses
without importing the dataset builders)."""

from simexplain_jax.imageops import IMAGENET_MEAN, IMAGENET_STD, normalize_images, normalized_color

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize_images", "normalized_color"]
