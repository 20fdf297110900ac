"""Saliency maps for image pairs: which regions of the query make it similar to the reference."""

from simexplain_jax.saliency.gradients import gradient, integrated_gradients
from simexplain_jax.saliency.lime import lime, lime_variable
from simexplain_jax.saliency.pairs import METHODS, explain_pairs
from simexplain_jax.saliency.occlusion import sliding_window, sliding_window_variable
from simexplain_jax.saliency.perturbation import (perturbation, perturbation_batch, perturbation_variable,
                                                  perturbation_variable_batch)
from simexplain_jax.saliency.random import random
from simexplain_jax.saliency.rise import rise, rise_variable

__all__ = ["rise", "rise_variable", "sliding_window", "sliding_window_variable", "lime", "lime_variable",
           "perturbation", "perturbation_variable", "perturbation_batch", "perturbation_variable_batch", "gradient",
           "integrated_gradients", "random", "explain_pairs", "METHODS"]
