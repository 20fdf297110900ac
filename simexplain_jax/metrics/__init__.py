"""Metrics for explanations: causal insertion/deletion (more in later modules)."""

from simexplain_jax.metrics.causal import InsertionDeletion, insertion_deletion, minmax_normalize, trapezoid_auc

__all__ = ["InsertionDeletion", "insertion_deletion", "minmax_normalize", "trapezoid_auc"]
