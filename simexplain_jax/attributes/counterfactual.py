"""The counterfactual oracle on the shapes benchmark: which attribute's removal from the query
drops the similarity most (docs/method.md, "Evaluating attribute explanations"; exact because
scenes re-render), and counterfactual edits of training scenes, from which
``concepts.fit_edit_concepts`` fits directions to what the model is sensitive to."""

from __future__ import annotations

from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from simexplain_jax.data import shapes
from simexplain_jax.engine import apply_in_chunks
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
    """``s(q, r) - s(q without a, r)`` for each attribute (all renders embedded in one compiled batch)."""
    images = [shapes.render(scene, image_size)] + [shapes.render(without(scene, a), image_size) for a in attributes]
    embeddings = apply_in_chunks(embed_fn, normalize_images(np.stack(images)))
    scores = np.asarray(cosine(jnp.asarray(embeddings), jnp.asarray(reference_embedding)[None]))
    return scores[0] - scores[1:]


def oracle(embed_fn, scene: shapes.Scene, reference_embedding, image_size: int,
           candidates: Optional[Sequence[str]] = None) -> tuple[str, dict]:
    """The candidate whose removal drops similarity most (default candidates: the key object's
    four attributes) and every candidate's drop."""
    if candidates is None:
        candidates = list(scene.objects[shapes.key_index(scene)].attribute_names())
    drops = similarity_drops(embed_fn, scene, reference_embedding, candidates, image_size)
    return candidates[int(np.argmax(drops))], dict(zip(candidates, drops.tolist()))


def scene_edits(embed_fn, scenes: Sequence[shapes.Scene], attribute_names: Sequence[str], image_size: int,
                batch_size: int = 256, progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each scene against itself with one of its attributes removed (``without``), for every
    attribute any of its objects carries; the arguments of ``concepts.fit_edit_concepts``.

    Args:
      embed_fn: the similarity model's ``embed_fn``.
      scenes: training (or validation) scenes; never test.
      attribute_names: the dataset's attribute names ("type:value"), in label order.
      image_size: the render size.
      batch_size: images embedded at a time.
      progress: called with the number of scenes done after each scene, or None.

    Returns:
      ``(original [E, D], edited [E, D], attributes [E])``: the embeddings of each scene and of
      its edit, and the index of the attribute removed.
    """
    index = {name: i for i, name in enumerate(attribute_names)}
    originals, edits, removed = [], [], []
    for scene in scenes:
        present = sorted({name for obj in scene.objects for name in obj.attribute_names()}, key=index.__getitem__)
        originals.append(shapes.render(scene, image_size))
        for name in present:
            edits.append(shapes.render(without(scene, name), image_size))
            removed.append((len(originals) - 1, index[name]))
        if progress is not None:
            progress(1)
    embed = lambda images: apply_in_chunks(embed_fn, normalize_images(np.stack(images)), batch_size)  # noqa: E731
    rows = np.asarray([r for r, _ in removed])
    return embed(originals)[rows], embed(edits), np.asarray([a for _, a in removed])
