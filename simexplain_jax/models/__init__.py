"""Flax (linen) models: ResNets, a small CNN, embedding heads."""

from simexplain_jax.models.embedding import EmbeddingNet, embed_fn
from simexplain_jax.models.resnet import BasicBlock, Bottleneck, ResNet, ResNet18, ResNet34, ResNet50, SmallCNN

__all__ = ["EmbeddingNet", "embed_fn", "BasicBlock", "Bottleneck", "ResNet", "ResNet18", "ResNet34", "ResNet50",
           "SmallCNN"]
