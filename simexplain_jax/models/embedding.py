"""Embedding heads and the bridge from a Flax model to the pure ``embed_fn`` the library takes.

- ``EmbeddingNet``: backbone feature map -> global average pool -> linear to D -> L2 normalise
  (the class-similarity model of docs/method.md, "Similarity models").
- ``TypeAwareEmbedding``: the Polyvore-style model (Vasileva et al. 2018). The backbone and head
  give a general embedding ``e(x)``; each type-pair condition c has a learned mask ``m_c`` and
  ``f_c(x) = L2norm(ReLU(m_c) * e(x))``. ``e(x)`` is computed once and every condition is an
  elementwise product of it, normalised over the embedding axis (the reference code normalises
  over the wrong axis when it computes all conditions at once).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from simexplain_jax.similarity import l2_normalize


class EmbeddingNet(nn.Module):
    """``backbone`` feature map -> global average pool -> linear to ``dim`` -> L2 normalise."""

    backbone: nn.Module
    dim: int = 64
    normalize: bool = True

    @nn.compact
    def __call__(self, images, train: bool = False):
        features = self.backbone(images, train=train)
        embedding = nn.Dense(self.dim, name="head")(jnp.mean(features, axis=(1, 2)))
        return l2_normalize(embedding) if self.normalize else embedding


def _mask_init(key, shape, dtype=jnp.float32):
    return 0.9 + 0.7 * jax.random.normal(key, shape, dtype)  # as Vasileva et al.'s code


class TypeAwareEmbedding(nn.Module):
    """General embedding plus one learned mask per type-pair condition.

    ``__call__`` returns the general embedding ``e(x) [B, D]`` (not normalised);
    ``condition_embeddings`` gives ``f_c(x)`` for one condition index per row or for all.
    """

    backbone: nn.Module
    num_conditions: int
    dim: int = 64

    def setup(self):
        self.head = nn.Dense(self.dim)
        self.masks = self.param("masks", _mask_init, (self.num_conditions, self.dim))

    def __call__(self, images, train: bool = False):
        return self.head(jnp.mean(self.backbone(images, train=train), axis=(1, 2)))

    def condition_embeddings(self, general, conditions=None):
        """``general [B, D]`` -> ``[B, D]`` for ``conditions [B]`` (ints), or ``[B, C, D]`` for all C."""
        masks = nn.relu(self.masks)
        if conditions is None:
            return l2_normalize(general[:, None, :] * masks[None], axis=-1)
        return l2_normalize(general * masks[conditions], axis=-1)

    def embed(self, images, conditions, train: bool = False):
        return self.condition_embeddings(self(images, train=train), conditions)


@dataclasses.dataclass(frozen=True)
class _InferenceApply:
    """``(variables, images) -> model.apply(variables, images, train=False)``; hashable and
    compared by the model's value, so equal models share compiled programs."""

    model: nn.Module

    def __call__(self, variables, images: jax.Array) -> jax.Array:
        return self.model.apply(variables, images, train=False)


@dataclasses.dataclass(frozen=True)
class _ConditionApply:
    model: nn.Module

    def __call__(self, variables, condition, images: jax.Array) -> jax.Array:
        conditions = jnp.full((images.shape[0],), condition, jnp.int32)
        return self.model.apply(variables, images, conditions, train=False, method=TypeAwareEmbedding.embed)


def inference_fn(model: nn.Module, variables) -> Partial:
    """The pure ``images -> model outputs`` function of any model in inference mode (a Partial)."""
    return Partial(_InferenceApply(model), variables)


def embed_fn(model: nn.Module, variables) -> Partial:
    """The pure ``images [B, H, W, C] -> [B, D]`` function of ``model`` in inference mode.

    A ``jax.tree_util.Partial``: the variables travel through ``jit`` as arguments, so new
    weights of the same shapes reuse compiled saliency programs.
    """
    return inference_fn(model, variables)


def condition_embed_fn(model: TypeAwareEmbedding, variables, condition) -> Partial:
    """``images -> f_c(images) [B, D]`` for one type-pair condition ``c`` of a TypeAwareEmbedding.

    The condition is a traced argument: explaining another condition does not recompile.
    """
    if not isinstance(model, TypeAwareEmbedding):
        raise TypeError(f"condition_embed_fn needs a TypeAwareEmbedding, got {type(model).__name__}")
    return Partial(_ConditionApply(model), variables, jnp.asarray(condition, jnp.int32))
