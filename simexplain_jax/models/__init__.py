"""Flax (linen) models: ResNets, a small CNN, embedding heads, torchvision weight import, and
adapters for your own model (``SimilarityModel``: linen, NNX, a plain function, torchvision ResNets)."""

from simexplain_jax.models.embedding import EmbeddingNet, TypeAwareEmbedding, condition_embed_fn, embed_fn
from simexplain_jax.models.resnet import BasicBlock, Bottleneck, ResNet, ResNet18, ResNet34, ResNet50, SmallCNN
from simexplain_jax.models.torchvision_import import load_torchvision_resnet, read_state_dict
from simexplain_jax.models.user import (SimilarityModel, check_embeddings, from_function, from_linen, from_nnx,
                                        load_factory, torchvision_resnet)

__all__ = ["EmbeddingNet", "TypeAwareEmbedding", "condition_embed_fn", "embed_fn", "BasicBlock", "Bottleneck",
           "ResNet", "ResNet18", "ResNet34", "ResNet50", "SmallCNN", "load_torchvision_resnet", "read_state_dict",
           "SimilarityModel", "check_embeddings", "from_function", "from_linen", "from_nnx", "load_factory",
           "torchvision_resnet"]
