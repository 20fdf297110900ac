"""The counterfactual oracle on the shapes benchmark: which attribute's removal from the query
drops the similarity most (docs/method.md, "Evaluating attribute explanations"; exact because
scenes re-render)."""

from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from simexplain_jax.data import shapes
from simexplain_jax.imageops import normalize_images
from simexplain_jax.similarity import cosine


def without(scene: shapes.Scene, attribute: str) -> shapes.Scene:
    """The scene with ``attribute`` ("type:value") removed: every object carrying it gets another
    value of that type (the first filler that differs; the other size for sizes)."""
    attribute_type, value = attribute.split(":")
    replacement = next(v for v in shapes.FILLER_VALUES[attribute_type] if v != value)
    for index, obj in enumerate(scene.objects):
        if obj.attribute(attribute_type) == value:
            scene = shapes.with_attribute(scene, index, attribute_type, replacement)
    return scene


def similarity_drops(embed_fn, scene: shapes.Scene, reference_embedding, attributes: Sequence[str],
                     image_size: int) -> np.ndarray:
    """``s(q, r) - s(q without a, r)`` for each attribute (all renders embedded in one batch)."""
    images = [shapes.render(scene, image_size)] + [shapes.render(without(scene, a), image_size) for a in attributes]
    embeddings = embed_fn(jnp.asarray(normalize_images(np.stack(images))))
    scores = np.asarray(cosine(embeddings, jnp.asarray(reference_embedding)[None]))
    return scores[0] - scores[1:]


def oracle(embed_fn, scene: shapes.Scene, reference_embedding, image_size: int,
           candidates: Optional[Sequence[str]] = None) -> tuple[str, dict]:
    """The candidate whose removal drops similarity most (default candidates: the key object's
    four attributes) and every candidate's drop."""
    if candidates is None:
        candidates = list(scene.objects[shapes.key_index(scene)].attribute_names())
    drops = similarity_drops(embed_fn, scene, reference_embedding, candidates, image_size)
    return candidates[int(np.argmax(drops))], dict(zip(candidates, drops.tolist()))
