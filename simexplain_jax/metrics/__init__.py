"""Metrics for explanations: causal insertion/deletion, pointing, correspondences, pair verification."""

from simexplain_jax.metrics.attributes import average_precision, mean_average_precision, regret_ratios
from simexplain_jax.metrics.causal import (InsertionDeletion, insertion_deletion, insertion_deletion_batch,
                                           minmax_normalize, trapezoid_auc)
from simexplain_jax.metrics.correspondence import (CorrespondencePointing, SecondOrderInsertionDeletion,
                                                   correspondence_pointing, second_order_insertion_deletion,
                                                   unrelated_substrates)
from simexplain_jax.metrics.pointing import Pointing, pointing
from simexplain_jax.metrics.verification import roc_auc

__all__ = ["InsertionDeletion", "insertion_deletion", "insertion_deletion_batch", "minmax_normalize", "trapezoid_auc",
           "Pointing", "pointing", "CorrespondencePointing", "correspondence_pointing",
           "SecondOrderInsertionDeletion", "second_order_insertion_deletion", "unrelated_substrates",
           "roc_auc", "average_precision", "mean_average_precision", "regret_ratios"]
