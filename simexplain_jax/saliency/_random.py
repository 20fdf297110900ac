"""The random baseline: a U(0, 1) map, the floor every saliency method must beat."""

from __future__ import annotations

from typing import Optional

import jax
from jax.typing import ArrayLike

from simexplain_jax import checks
from simexplain_jax.engine import EmbedFn

DEFAULTS = dict(compute_dtype="float32")


def options(compute_dtype="float32") -> dict:
    return dict(compute_dtype=checks.check_compute_dtype(compute_dtype))


def random_core(embed_fn, query, references, key, *, compute_dtype="float32"):
    """``[K, H, W]`` maps, map k drawn from ``fold_in(key, k)`` (``embed_fn`` is not called, so
    ``compute_dtype`` changes nothing)."""
    height, width = query.shape[:2]
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(key, k), (height, width)))(
        jax.numpy.arange(references.shape[0]))


_random_jit = jax.jit(random_core, static_argnames=("compute_dtype",))


def random(embed_fn: EmbedFn, query: ArrayLike, reference_embeddings: ArrayLike = None, *,
           key: Optional[jax.Array] = None, compute_dtype: str = "float32") -> jax.Array:
    """U(0, 1) saliency ``[H, W]`` (for None or ``[D]``) or ``[K, H, W]`` (for ``[K, D]``).

    Takes the same arguments as the other methods so it can stand in for them; ``embed_fn`` is
    not called (``compute_dtype`` is checked and has no effect).
    """
    if key is None:
        raise ValueError("random saliency needs key=")
    query = checks.check_image(query, "query")
    if reference_embeddings is None:
        reference_embeddings = jax.numpy.zeros((1,))
    refs, single = checks.check_reference_embeddings(reference_embeddings)
    maps = _random_jit(None, query, refs, key, **options(compute_dtype))
    return maps[0] if single else maps
