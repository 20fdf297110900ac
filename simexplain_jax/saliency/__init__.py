"""Saliency maps for image pairs: which regions of the query make it similar to the reference."""

from simexplain_jax.saliency.occlusion import sliding_window, sliding_window_variable
from simexplain_jax.saliency.random import random
from simexplain_jax.saliency.rise import rise, rise_variable

__all__ = ["rise", "rise_variable", "sliding_window", "sliding_window_variable", "random"]
