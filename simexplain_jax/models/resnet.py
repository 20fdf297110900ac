"""ResNets (18/34/50) and a small CNN in flax.linen, NHWC.

The layout and padding follow torchvision exactly (7x7/2 stem padded by 3, 3x3 max-pool padded
by 1, stride on the 3x3 convolution of bottlenecks), so torchvision-format weights map one to one.
``stages`` cuts the network early: ``stages=3`` is the paper's similarity backbone (ResNet-18 cut
after layer3, 256 channels). Batch norm runs in inference mode unless ``train=True``.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

_BN = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)


class BasicBlock(nn.Module):
    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = functools.partial(_BN, use_running_average=not train)
        residual = x
        y = nn.Conv(self.features, (3, 3), self.strides, padding=((1, 1), (1, 1)), use_bias=False, name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = nn.Conv(self.features, (3, 3), 1, padding=((1, 1), (1, 1)), use_bias=False, name="conv2")(y)
        y = norm(name="bn2", scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = nn.Conv(self.features, (1, 1), self.strides, use_bias=False, name="downsample_conv")(x)
            residual = norm(name="downsample_bn")(residual)
        return nn.relu(y + residual)


class Bottleneck(nn.Module):
    features: int
    strides: int = 1
    expansion: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = functools.partial(_BN, use_running_average=not train)
        residual = x
        y = nn.Conv(self.features, (1, 1), use_bias=False, name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = nn.Conv(self.features, (3, 3), self.strides, padding=((1, 1), (1, 1)), use_bias=False, name="conv2")(y)
        y = nn.relu(norm(name="bn2")(y))
        y = nn.Conv(self.features * self.expansion, (1, 1), use_bias=False, name="conv3")(y)
        y = norm(name="bn3", scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = nn.Conv(self.features * self.expansion, (1, 1), self.strides, use_bias=False,
                               name="downsample_conv")(x)
            residual = norm(name="downsample_bn")(residual)
        return nn.relu(y + residual)


class ResNet(nn.Module):
    """A torchvision-layout ResNet returning the feature map of the last kept stage, or logits.

    Attributes:
      stage_sizes: blocks per stage ((2, 2, 2, 2) for ResNet-18).
      block: BasicBlock or Bottleneck.
      width: channels of the first stage (64 in the standard networks; scale for a slimmer net).
      stages: how many of the four stages to keep (3 = cut after layer3).
      num_classes: if set, global average pool and a linear classifier are appended.
    """

    stage_sizes: Sequence[int]
    block: type = BasicBlock
    width: int = 64
    stages: int = 4
    num_classes: Optional[int] = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.width, (7, 7), 2, padding=((3, 3), (3, 3)), use_bias=False, name="conv1")(x)
        x = nn.relu(_BN(use_running_average=not train, name="bn1")(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for stage, num_blocks in enumerate(self.stage_sizes[: self.stages]):
            for index in range(num_blocks):
                strides = 2 if stage > 0 and index == 0 else 1
                x = self.block(self.width * 2**stage, strides, name=f"layer{stage + 1}_{index}")(x, train)
        if self.num_classes is not None:
            x = nn.Dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2)))
        return x


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck)


class SmallCNN(nn.Module):
    """A fast CNN for CPU work: ``len(features)`` 3x3 stride-2 convolutions with batch norm and ReLU."""

    features: Sequence[int] = (32, 64, 128)

    @nn.compact
    def __call__(self, x, train: bool = False):
        for index, features in enumerate(self.features):
            x = nn.Conv(features, (3, 3), 2, padding=((1, 1), (1, 1)), use_bias=False, name=f"conv{index}")(x)
            x = nn.relu(_BN(use_running_average=not train, name=f"bn{index}")(x))
        return x
