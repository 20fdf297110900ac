"""Embedding heads and the bridge from a Flax model to the pure ``embed_fn`` the library takes."""

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


@dataclasses.dataclass(frozen=True)
class _InferenceApply:
    """``(variables, images) -> model.apply(variables, images, train=False)``; hashable and
    compared by the model's value, so equal models share compiled programs."""

    model: nn.Module

    def __call__(self, variables, images: jax.Array) -> jax.Array:
        return self.model.apply(variables, images, train=False)


def embed_fn(model: nn.Module, variables) -> Partial:
    """The pure ``images [B, H, W, C] -> [B, D]`` function of ``model`` in inference mode.

    A ``jax.tree_util.Partial``: the variables travel through ``jit`` as arguments, so new
    weights of the same shapes reuse compiled saliency programs.
    """
    return Partial(_InferenceApply(model), variables)
