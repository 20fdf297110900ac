"""The attribute predictor (docs/method.md, "The attribute predictor"): a CNN backbone, then a
3x3 convolution without bias to A channels, one spatial *attribute activation map* (AAM) per
attribute. The score of attribute a is the global average of its AAM; its spatial map is the
softmax of the AAM over positions. The paper uses ImageNet ResNet-50 (no avgpool/fc): 4 x 4 maps
at 112 px.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class AttributePredictor(nn.Module):
    """``images [B, H, W, C] -> (scores [B, A], aams [B, h, w, A])``."""

    backbone: nn.Module
    num_attributes: int

    @nn.compact
    def __call__(self, images, train: bool = False):
        features = self.backbone(images, train=train)
        aams = nn.Conv(self.num_attributes, (3, 3), padding="SAME", use_bias=False, name="aam")(features)
        return jnp.mean(aams, axis=(1, 2)), aams


def spatial_softmax(aams: jax.Array) -> jax.Array:
    """``[B, h, w, A] -> [B, A, h*w]``: each attribute's map as a distribution over positions."""
    b, h, w, a = aams.shape
    return jax.nn.softmax(aams.reshape(b, h * w, a).transpose(0, 2, 1), axis=-1)
