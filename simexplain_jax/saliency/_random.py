"""The random baseline: a U(0, 1) map, the floor every saliency method must beat."""

from __future__ import annotations

from typing import Optional

import jax
from jax.typing import ArrayLike

from simexplain_jax import checks
from simexplain_jax.engine import EmbedFn

DEFAULTS: dict = {}


def options() -> dict:
    return {}


def random_core(embed_fn, query, references, key):
    """``[K, H, W]`` maps, map k drawn from ``fold_in(key, k)`` (``embed_fn`` is not called)."""
    height, width = query.shape[:2]
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(key, k), (height, width)))(
        jax.numpy.arange(references.shape[0]))


_random_jit = jax.jit(random_core)


def random(embed_fn: EmbedFn, query: ArrayLike, reference_embeddings: ArrayLike = None, *,
           key: Optional[jax.Array] = None) -> jax.Array:
    """U(0, 1) saliency ``[H, W]`` (for None or ``[D]``) or ``[K, H, W]`` (for ``[K, D]``).

    Takes the same arguments as the other methods so it can stand in for them; ``embed_fn`` is
    not called.
    """
    if key is None:
        raise ValueError("random saliency needs key=")
    query = checks.check_image(query, "query")
    if reference_embeddings is None:
        reference_embeddings = jax.numpy.zeros((1,))
    refs, single = checks.check_reference_embeddings(reference_embeddings)
    maps = _random_jit(None, query, refs, key)
    return maps[0] if single else maps
