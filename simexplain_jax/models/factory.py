"""Backbones by name, for configs."""

from __future__ import annotations

import flax.linen as nn

from simexplain_jax.models.embedding import EmbeddingNet, TypeAwareEmbedding
from simexplain_jax.models.resnet import ResNet18, ResNet34, ResNet50, SmallCNN

BACKBONES = ("small_cnn", "resnet18", "resnet34", "resnet50")


def backbone(name: str, *, width: int = 64, stages: int = 3) -> nn.Module:
    """``small_cnn`` (channels ``width/2, width, 2*width``) or a ResNet with first-stage width
    ``width`` cut after ``stages`` stages (3 = the paper's similarity backbone)."""
    if name not in BACKBONES:
        raise ValueError(f"model must be one of {BACKBONES}, got {name!r}")
    if width < 1 or not 1 <= stages <= 4:
        raise ValueError(f"need width >= 1 and stages in 1..4, got width={width}, stages={stages}")
    if name == "small_cnn":
        return SmallCNN(features=(max(width // 2, 1), width, 2 * width))
    return {"resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50}[name](width=width, stages=stages)


def similarity_model(config, num_conditions: int = 0) -> nn.Module:
    """The similarity model a ``similarity_*`` config describes (``model``, ``width``, ``stages``,
    ``embedding_dim``): an EmbeddingNet, or a TypeAwareEmbedding when there are type conditions."""
    net = backbone(config["model"], width=config["width"], stages=config["stages"])
    if num_conditions:
        return TypeAwareEmbedding(net, num_conditions=num_conditions, dim=config["embedding_dim"])
    return EmbeddingNet(net, dim=config["embedding_dim"])
