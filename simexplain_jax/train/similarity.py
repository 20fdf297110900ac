"""Triplet training of similarity models: pure, jitted train steps (buffers donated) and evaluation.

Two batch kinds:
- class labels (AwA2, shapes): ``{"image": [B, H, W, C], "label": [B]}``; positives share the
  label, negatives do not;
- outfit pairs (Polyvore, type-aware): ``{"anchor", "positive": [P, H, W, C], "condition": [P],
  "category": [P] (the positive's category), "outfit": [P]}``; for anchor i the positive is
  item i, the negatives are the batch's positives of the same category from other outfits, and
  every distance is measured in anchor i's type-specific space ``f_c``.
Batch norm runs in training mode inside the step and its statistics are carried in the state.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from simexplain_jax.metrics.verification import roc_auc
from simexplain_jax.models.embedding import TypeAwareEmbedding
from simexplain_jax.similarity import l2_normalize
from simexplain_jax.train.triplet import euclidean_distances, label_masks, triplet_loss


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def make_optimizer(learning_rate: float, decay_rate: float = 1.0, decay_steps: int = 1) -> optax.GradientTransformation:
    """Adam with exponential decay ``lr * decay_rate ** floor(step / decay_steps)`` (the paper's
    per-epoch decay when ``decay_steps`` is the number of steps per epoch)."""
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    schedule = optax.exponential_decay(learning_rate, max(int(decay_steps), 1), decay_rate, staircase=True)
    return optax.adam(schedule)


def create_train_state(model: nn.Module, optimizer: optax.GradientTransformation, key: jax.Array,
                       sample_images: jax.Array, variables=None) -> TrainState:
    """Initial state; pass ``variables`` to start from given (e.g. imported) weights."""
    if variables is None:
        variables = model.init(key, sample_images)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=optimizer.init(params))


def _apply_train(model, state, params, images):
    out, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, images, train=True,
                               mutable=["batch_stats"])
    return out, updates.get("batch_stats", state.batch_stats)


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, *, margin: float = 0.2,
                    mining: str = "semi_hard", batch_kind: str = "labels") -> Callable:
    """``train_step(state, batch) -> (state, {"loss", "fraction_active"})``, jitted, state donated."""
    if batch_kind not in ("labels", "outfits"):
        raise ValueError(f"batch_kind must be 'labels' or 'outfits', got {batch_kind!r}")
    if batch_kind == "outfits" and not isinstance(model, TypeAwareEmbedding):
        raise ValueError("outfit batches need a TypeAwareEmbedding model")

    def loss_fn(params, state, batch):
        if batch_kind == "labels":
            out, stats = _apply_train(model, state, params, batch["image"])
            embeddings = l2_normalize(out)
            positive, negative = label_masks(batch["label"])
            d = euclidean_distances(embeddings, embeddings)
        else:
            p = batch["anchor"].shape[0]
            general, stats = _apply_train(model, state, params, jnp.concatenate([batch["anchor"], batch["positive"]]))
            variables = {"params": params, "batch_stats": stats}
            conditions = batch["condition"]
            anchors = model.apply(variables, general[:p], conditions, method=TypeAwareEmbedding.condition_embeddings)
            every = model.apply(variables, general[p:], method=TypeAwareEmbedding.condition_embeddings)  # [P, C, D]
            candidates = jnp.take(every, conditions, axis=1).transpose(1, 0, 2)  # [A, K, D] in anchor's space
            d = jnp.sqrt(jnp.maximum(jnp.sum((anchors[:, None, :] - candidates) ** 2, -1), 1e-12))
            positive = jnp.eye(p, dtype=bool)
            negative = (batch["category"][None, :] == batch["category"][:, None]) & (
                batch["outfit"][None, :] != batch["outfit"][:, None])
        loss, active = triplet_loss(d, positive, negative, margin, mining)
        return loss, (active, stats)

    def train_step(state: TrainState, batch):
        (loss, (active, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  batch_stats=stats, opt_state=opt_state)
        return new_state, {"loss": loss, "fraction_active": active}

    return jax.jit(train_step, donate_argnums=0)


def embed_all(embed, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``images [N, H, W, C]`` -> ``[N, D]`` (``apply_in_chunks`` of the embed_fn)."""
    from simexplain_jax.engine import apply_in_chunks

    return apply_in_chunks(embed, images, batch_size)


def pair_auc(embeddings: np.ndarray, pairs: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of cosine similarity on index pairs ``[P, 2]`` with labels ``[P]``."""
    a = embeddings[pairs[:, 0]]
    b = embeddings[pairs[:, 1]]
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    scores = np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-12)
    return roc_auc(scores, labels)


def evaluate_pairs(model: nn.Module, variables, pair_set, batch_size: int = 256) -> float:
    """Pair-verification ROC AUC of ``model`` on a ``PairSet`` (uint8 images, normalised here).

    Type-aware models score a pair in its condition's space ``f_c`` (the general space where
    ``conditions`` is -1); other models by cosine of their embeddings.
    """
    from simexplain_jax.data.preprocess import normalize_images
    from simexplain_jax.models.embedding import embed_fn

    f = embed_fn(model, variables)
    embeddings = np.concatenate([embed_all(f, normalize_images(pair_set.images[i:i + 4096]), batch_size)
                                 for i in range(0, len(pair_set.images), 4096)])
    if not isinstance(model, TypeAwareEmbedding) or pair_set.conditions is None:
        return pair_auc(embeddings, pair_set.pairs, pair_set.labels)
    masks = np.maximum(np.asarray(variables["params"]["masks"]), 0.0)
    a, b = embeddings[pair_set.pairs[:, 0]], embeddings[pair_set.pairs[:, 1]]
    c = pair_set.conditions
    weight = np.where(c[:, None] >= 0, masks[np.maximum(c, 0)], 1.0)
    a, b = a * weight, b * weight
    scores = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return roc_auc(scores, pair_set.labels)


def load_trained(checkpoint_dir: str, which: str = "best"):
    """``(model, variables, config)`` of a model trained by ``experiments.train_similarity``.

    Rebuilds the model and its optimizer from ``<checkpoint_dir>/config.json`` and restores the
    ``best`` (or ``last``) checkpoint.
    """
    import json
    import os

    from simexplain_jax.models.factory import similarity_model

    path = os.path.join(checkpoint_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {checkpoint_dir} a train_similarity checkpoint folder?")
    with open(path) as f:
        config = json.load(f)
    model = similarity_model(config, config.get("num_conditions", 0))
    return model, restore_variables(checkpoint_dir, model, config, which), config


def restore_variables(checkpoint_dir: str, model, config: dict, which: str = "best"):
    """The variables of ``model`` from a ``Checkpointer`` folder, given the training ``config``
    (image size and the optimizer settings that shape the saved optimizer state)."""
    from simexplain_jax.checkpoint import Checkpointer

    optimizer = make_optimizer(config["learning_rate"], config["lr_decay_rate"],
                               config.get("lr_decay_steps") or config.get("steps_per_epoch", 1))
    size = config["image_size"]
    state = create_train_state(model, optimizer, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    checkpointer = Checkpointer(checkpoint_dir)
    try:
        state, _ = checkpointer.restore(state, which=which)
    finally:
        checkpointer.close()
    return state.variables()
