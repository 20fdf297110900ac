"""Training the attribute predictor: classification plus lambda x saliency matching (Eq. 2).

Batches: ``{"image" [B, H, W, C], "attributes" [B, A], "saliency" [B, R, g, g], "valid" [B, R]}``
with g the activation-map grid. The step is jitted with the state donated; batch norm runs in
training mode and its statistics are carried in the state.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
import optax

from simexplain_jax.attributes.losses import classification_loss, saliency_matching_loss, saliency_targets
from simexplain_jax.metrics.attributes import mean_average_precision
from simexplain_jax.models.attributes import spatial_softmax
from simexplain_jax.train.similarity import TrainState


def make_attribute_step(model, optimizer: optax.GradientTransformation, *, lam: float,
                        classification: str = "sigmoid_bce", normalize: str = "zscore") -> Callable:
    """``step(state, batch) -> (state, {"loss", "classification", "matching"})``."""

    def loss_fn(params, state, batch):
        (scores, aams), updates = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                              train=True, mutable=["batch_stats"])
        cls = classification_loss(scores, batch["attributes"], classification)
        if aams.shape[1:3] != batch["saliency"].shape[-2:]:
            raise ValueError(f"saliency maps are {batch['saliency'].shape[-2:]} but the activation maps are "
                             f"{aams.shape[1:3]}: cache them at the activation-map grid")
        matching = saliency_matching_loss(spatial_softmax(aams), saliency_targets(batch["saliency"], normalize),
                                          batch["valid"], batch["attributes"])
        return cls + lam * matching, (cls, matching, updates["batch_stats"])

    def step(state: TrainState, batch):
        (loss, (cls, matching, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                             batch_stats=stats, opt_state=opt_state), {
            "loss": loss, "classification": cls, "matching": matching}

    return jax.jit(step, donate_argnums=0)


def predict(model, variables, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [N, A], aams [N, h, w, A])`` of normalised ``images`` in inference mode."""
    from simexplain_jax.engine import apply_in_chunks
    from simexplain_jax.models.embedding import inference_fn

    return apply_in_chunks(inference_fn(model, variables), images, batch_size)


def evaluate_map(model, variables, images: np.ndarray, labels: np.ndarray) -> float:
    return mean_average_precision(predict(model, variables, images)[0], labels)


def load_attribute_predictor(checkpoint_dir: str, which: str = "best"):
    """``(model, variables, config)`` of a predictor trained by ``experiments.train_attributes``."""
    import json
    import os

    from simexplain_jax.models.attributes import AttributePredictor
    from simexplain_jax.models.factory import backbone
    from simexplain_jax.train.similarity import restore_variables

    with open(os.path.join(checkpoint_dir, "config.json")) as f:
        config = json.load(f)
    model = AttributePredictor(backbone(config["model"], width=config["width"], stages=config["stages"]),
                               config["num_attributes"])
    return model, restore_variables(checkpoint_dir, model, config, which), config
