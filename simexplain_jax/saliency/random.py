"""The random baseline: a U(0, 1) map, the floor every saliency method must beat."""

from __future__ import annotations

import jax

from simexplain_jax.saliency import _common


def random(embed_fn, query, reference_embeddings=None, *, key: jax.Array) -> jax.Array:
    """U(0, 1) saliency ``[H, W]`` (or ``[K, H, W]`` for ``[K, D]`` reference embeddings).

    Takes the same arguments as the other methods so it can stand in for them; ``embed_fn`` is
    not called.
    """
    if key is None:
        raise ValueError("random saliency needs key=")
    query = _common.check_image(query, "query")
    height, width = query.shape[:2]
    if reference_embeddings is None:
        return jax.random.uniform(key, (height, width))
    refs, single = _common.check_reference_embeddings(reference_embeddings)
    maps = jax.random.uniform(key, (refs.shape[0], height, width))
    return maps[0] if single else maps
