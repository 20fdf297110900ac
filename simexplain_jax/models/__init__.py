"""Flax (linen) models: ResNets, a small CNN, embedding heads, torchvision weight import."""

from simexplain_jax.models.embedding import EmbeddingNet, TypeAwareEmbedding, condition_embed_fn, embed_fn
from simexplain_jax.models.resnet import BasicBlock, Bottleneck, ResNet, ResNet18, ResNet34, ResNet50, SmallCNN
from simexplain_jax.models.torchvision_import import load_torchvision_resnet, read_state_dict

__all__ = ["EmbeddingNet", "TypeAwareEmbedding", "condition_embed_fn", "embed_fn", "BasicBlock", "Bottleneck",
           "ResNet", "ResNet18", "ResNet34", "ResNet50", "SmallCNN", "load_torchvision_resnet", "read_state_dict"]
