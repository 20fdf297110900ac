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

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from simexplain_jax.imageops import normalize_images
from simexplain_jax.metrics.verification import roc_auc
from simexplain_jax.engine import apply_in_chunks
from simexplain_jax.models.embedding import TypeAwareEmbedding, embed_fn
from simexplain_jax.similarity import l2_normalize
from simexplain_jax.train.triplet import euclidean_distances, label_masks, triplet_loss


class TrainState(train_state.TrainState):
    """flax's ``TrainState`` (step, params, optimizer and its state, ``apply_fn``) with the batch-norm
    statistics; ``apply_fn`` and ``tx`` are static fields, not pytree leaves."""

    batch_stats: Any = None

    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def make_optimizer(learning_rate: float, decay_rate: float = 1.0, decay_steps: int = 1) -> optax.GradientTransformation:
    """Adam with exponential decay ``lr * decay_rate ** floor(step / decay_steps)`` (the paper's
    per-epoch decay when ``decay_steps`` is the number of steps per epoch)."""
    if not (math.isfinite(float(learning_rate)) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate}")
    if not (math.isfinite(float(decay_rate)) and decay_rate > 0):
        raise ValueError(f"decay_rate must be a finite number > 0, got {decay_rate}")
    schedule = optax.exponential_decay(learning_rate, max(int(decay_steps), 1), decay_rate, staircase=True)
    return optax.adam(schedule)


def create_train_state(model: nn.Module, optimizer: optax.GradientTransformation, key: jax.Array,
                       sample_images: jax.Array, variables=None) -> TrainState:
    """Initial state; pass ``variables`` to start from given (e.g. imported) weights."""
    if variables is None:
        variables = model.init(key, sample_images)
    state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=optimizer,
                              batch_stats=variables.get("batch_stats", {}))
    return state.replace(step=jnp.zeros((), jnp.int32))  # an array, not a Python int: checkpoints hold its dtype


def _apply_train(state, params, images):
    out, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images, train=True,
                                  mutable=["batch_stats"])
    return out, updates.get("batch_stats", state.batch_stats)


def make_train_step(model: nn.Module, *, margin: float = 0.2, mining: str = "semi_hard",
                    batch_kind: str = "labels") -> Callable:
    """``train_step(state, batch) -> (state, {"loss", "fraction_active"})``, jitted, state donated;
    the state (``create_train_state``) carries the optimizer."""
    if not (math.isfinite(float(margin)) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    if batch_kind not in ("labels", "outfits"):
        raise ValueError(f"batch_kind must be 'labels' or 'outfits', got {batch_kind!r}")
    if batch_kind == "outfits" and not isinstance(model, TypeAwareEmbedding):
        raise ValueError("outfit batches need a TypeAwareEmbedding model")

    def loss_fn(params, state, batch):
        if batch_kind == "labels":
            out, stats = _apply_train(state, params, batch["image"])
            embeddings = l2_normalize(out)
            positive, negative = label_masks(batch["label"])
            d = euclidean_distances(embeddings, embeddings)
        else:
            p = batch["anchor"].shape[0]
            general, stats = _apply_train(state, params, jnp.concatenate([batch["anchor"], batch["positive"]]))
            variables = {"params": params, "batch_stats": stats}
            conditions = batch["condition"]
            anchors = state.apply_fn(variables, general[:p], conditions, method=TypeAwareEmbedding.condition_embeddings)
            every = state.apply_fn(variables, general[p:], method=TypeAwareEmbedding.condition_embeddings)  # [P, C, D]
            candidates = jnp.take(every, conditions, axis=1).transpose(1, 0, 2)  # [A, K, D] in anchor's space
            d = jnp.sqrt(jnp.maximum(jnp.sum((anchors[:, None, :] - candidates) ** 2, -1), 1e-12))
            positive = jnp.eye(p, dtype=bool)
            negative = (batch["category"][None, :] == batch["category"][:, None]) & (
                batch["outfit"][None, :] != batch["outfit"][:, None])
        loss, active = triplet_loss(d, positive, negative, margin, mining)
        return loss, (active, stats)

    def train_step(state: TrainState, batch):
        (loss, (active, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state, batch)
        return state.apply_gradients(grads=grads, batch_stats=stats), {"loss": loss, "fraction_active": active}

    return jax.jit(train_step, donate_argnums=0)


def embed_all(embed, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``images [N, H, W, C]`` -> ``[N, D]`` (``apply_in_chunks`` of the embed_fn)."""
    return apply_in_chunks(embed, images, batch_size)


def pair_auc(embeddings: np.ndarray, pairs: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of cosine similarity on index pairs ``[P, 2]`` with labels ``[P]``."""
    a = embeddings[pairs[:, 0]]
    b = embeddings[pairs[:, 1]]
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    scores = np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-12)
    return roc_auc(scores, labels)


def check_embeddings(embeddings: np.ndarray, tolerance: float = 1e-6) -> None:
    """Raises ``FloatingPointError`` when a model's embeddings ``[N, D]`` of N > 1 different images
    are non-finite, or collapsed (every image embedded the same, to ``tolerance``): such a model
    cannot verify pairs, whatever its AUC says."""
    embeddings = np.asarray(embeddings)
    if not np.isfinite(embeddings).all():
        rows = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
        raise FloatingPointError(f"the model gives NaN or infinite embeddings ({len(rows)} of {len(embeddings)} "
                                 "images): it has diverged")
    if len(embeddings) > 1 and float(np.ptp(embeddings, axis=0).max()) <= tolerance:
        raise FloatingPointError(f"the model has collapsed: all {len(embeddings)} images get the same embedding "
                                 f"(spread {float(np.ptp(embeddings, axis=0).max()):.2e})")


def evaluate_pairs(model: nn.Module, variables, pair_set, batch_size: int = 256) -> float:
    """Pair-verification ROC AUC of ``model`` on a ``PairSet`` (uint8 images, normalised here).

    Type-aware models score a pair in its condition's space ``f_c`` (the general space where
    ``conditions`` is -1); other models by cosine of their embeddings.
    """
    f = embed_fn(model, variables)
    embeddings = np.concatenate([embed_all(f, normalize_images(pair_set.images[i:i + 4096]), batch_size)
                                 for i in range(0, len(pair_set.images), 4096)])
    check_embeddings(embeddings)
    if not isinstance(model, TypeAwareEmbedding) or pair_set.conditions is None:
        return pair_auc(embeddings, pair_set.pairs, pair_set.labels)
    masks = np.maximum(np.asarray(variables["params"]["masks"]), 0.0)
    a, b = embeddings[pair_set.pairs[:, 0]], embeddings[pair_set.pairs[:, 1]]
    c = pair_set.conditions
    weight = np.where(c[:, None] >= 0, masks[np.maximum(c, 0)], 1.0)
    a, b = a * weight, b * weight
    scores = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return roc_auc(scores, pair_set.labels)
