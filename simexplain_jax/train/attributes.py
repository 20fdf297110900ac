"""Training the attribute predictor: classification plus lambda x saliency matching (Eq. 2).

Batches: ``{"image" [B, H, W, C], "attributes" [B, A], "saliency" [B, R, g, g], "valid" [B, R]}``
with g the activation-map grid. The step is jitted with the state donated; batch norm runs in
training mode and its statistics are carried in the state. A trained predictor's folder holds
its checkpoints, ``config.json``, ``THRESHOLDS_FILE`` (``attributes.Thresholds.save``) and
``CONCEPTS_FILE`` (``attributes.save_concepts``: the similarity model's concept directions,
with that model's fingerprint).
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from simexplain_jax.attributes.losses import (CLASSIFICATION_LOSSES, SALIENCY_NORMALIZATIONS, classification_loss,
                                              saliency_matching_loss, saliency_targets)
from simexplain_jax.metrics.attributes import mean_average_precision
from simexplain_jax.models.attributes import spatial_softmax
from simexplain_jax.engine import apply_in_chunks
from simexplain_jax.models.embedding import inference_fn
from simexplain_jax.train.similarity import TrainState

THRESHOLDS_FILE = "thresholds.json"
CONCEPTS_FILE = "concepts.json"


def make_attribute_step(*, lam: float, classification: str = "sigmoid_bce", normalize: str = "zscore") -> Callable:
    """``step(state, batch) -> (state, {"loss", "classification", "matching"})``, jitted, state
    donated; the state (``train.similarity.create_train_state`` of an ``AttributePredictor``)
    carries the model and the optimizer."""
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if classification not in CLASSIFICATION_LOSSES:
        raise ValueError(f"classification must be one of {CLASSIFICATION_LOSSES}, got {classification!r}")
    if normalize not in SALIENCY_NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {SALIENCY_NORMALIZATIONS}, got {normalize!r}")

    def loss_fn(params, state, batch):
        (scores, aams), updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                                 batch["image"], train=True, mutable=["batch_stats"])
        cls = classification_loss(scores, batch["attributes"], classification)
        if aams.shape[1:3] != batch["saliency"].shape[-2:]:
            raise ValueError(f"saliency maps are {batch['saliency'].shape[-2:]} but the activation maps are "
                             f"{aams.shape[1:3]}: cache them at the activation-map grid")
        matching = saliency_matching_loss(spatial_softmax(aams), saliency_targets(batch["saliency"], normalize),
                                          batch["valid"], batch["attributes"])
        return cls + lam * matching, (cls, matching, updates["batch_stats"])

    def step(state: TrainState, batch):
        (loss, (cls, matching, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state, batch)
        return state.apply_gradients(grads=grads, batch_stats=stats), {
            "loss": loss, "classification": cls, "matching": matching}

    return jax.jit(step, donate_argnums=0)


def predict(model, variables, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [N, A], aams [N, h, w, A])`` of normalised ``images`` in inference mode."""
    return apply_in_chunks(inference_fn(model, variables), images, batch_size)


def evaluate_map(model, variables, images: np.ndarray, labels: np.ndarray) -> float:
    return mean_average_precision(predict(model, variables, images)[0], labels)
