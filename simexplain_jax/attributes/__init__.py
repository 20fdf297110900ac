"""Attribute explanations: losses (Eq. 2), calibration, selection, the counterfactual oracle.

The counterfactual oracle (``simexplain_jax.attributes.counterfactual``) imports the shapes
benchmark; it is not imported here so the core stays free of the dataset stack.
"""

from simexplain_jax.attributes.calibration import Thresholds
from simexplain_jax.attributes.concepts import (Concepts, cell_concept_relevance, concept_relevance, fit_concepts,
                                               fit_edit_concepts, load_concepts, query_removal_drop, save_concepts)
from simexplain_jax.attributes.losses import classification_loss, saliency_matching_loss, saliency_targets
from simexplain_jax.attributes.select import SELECTORS, Explanation, map_match, select

__all__ = ["Thresholds", "Concepts", "fit_concepts", "fit_edit_concepts", "cell_concept_relevance", "save_concepts", "load_concepts", "concept_relevance", "query_removal_drop", "classification_loss", "saliency_matching_loss", "saliency_targets", "SELECTORS",
           "Explanation", "map_match", "select"]
