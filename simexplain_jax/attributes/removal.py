"""The real-data proxy for removing an attribute (docs/method.md, "Evaluating attribute
explanations"): delete the region of the query where the attribute's activation map is strongest
and measure the similarity drop."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from simexplain_jax.engine import apply_in_chunks
from simexplain_jax.similarity import cosine


def activation_regions(aams: np.ndarray, attributes: Sequence[int], image_shape, fraction: float = 0.2) -> np.ndarray:
    """Bool ``[len(attributes), H, W]``: the top ``fraction`` of pixels of each attribute's upsampled map."""
    maps = jax.image.resize(jnp.asarray(np.moveaxis(aams[..., list(attributes)], -1, 0)),
                            (len(attributes), *image_shape[:2]), "linear")
    maps = np.asarray(maps).reshape(len(attributes), -1)
    cut = np.quantile(maps, 1.0 - fraction, axis=1, keepdims=True)
    return (maps >= cut).reshape(len(attributes), *image_shape[:2])


def removal_drops(embed_fn, query: np.ndarray, reference_embedding, aams: np.ndarray, attributes: Sequence[int],
                  fraction: float = 0.2) -> np.ndarray:
    """``s(q, r) - s(q with attribute a's region set to 0, r)`` for each attribute index."""
    if not len(attributes):
        return np.zeros(0)
    regions = activation_regions(aams, attributes, query.shape, fraction)
    images = np.concatenate([query[None], query[None] * (~regions)[..., None]])
    embeddings = apply_in_chunks(embed_fn, images)  # one compiled batch
    scores = np.asarray(cosine(jnp.asarray(embeddings), jnp.asarray(reference_embedding)[None]))
    return scores[0] - scores[1:]
