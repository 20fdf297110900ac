"""The random baseline: a U(0, 1) map, the floor every saliency method must beat."""

from __future__ import annotations

from typing import Optional

import jax
from jax.typing import ArrayLike

from simexplain_jax import checks
from simexplain_jax.engine import EmbedFn
from simexplain_jax.saliency._options import (MethodOptions, SaliencyResult, options_class, resolve, result, set_field,
                                              squeeze)



@options_class("random", references="embeddings", queries_per_device=16)
class Random(MethodOptions):
    """Options of the random baseline (:func:`random`).

    Attributes:
      compute_dtype: checked, like every method's, and without effect (``embed_fn`` is not called).
    """

    compute_dtype: str = "float32"

    def __post_init__(self):
        set_field(self, "compute_dtype", checks.check_compute_dtype(self.compute_dtype))

    def core(self, embed_fn, query, references, key) -> SaliencyResult:
        return random_core(embed_fn, query, references, key, self)


def random_core(embed_fn, query, references, key, options: Random) -> SaliencyResult:
    """``[K, H, W]`` maps, map k drawn from ``fold_in(key, k)``; traceable."""
    height, width = query.shape[:2]
    maps = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(key, k), (height, width)))(
        jax.numpy.arange(references.shape[0]))
    return result(maps, 0)


_random_jit = jax.jit(random_core)


def random(embed_fn: EmbedFn, query: ArrayLike, reference_embeddings: ArrayLike = None, *,
           key: Optional[jax.Array] = None, options: Optional[Random] = None, **overrides) -> SaliencyResult:
    """U(0, 1) saliency, taking the same arguments as the other methods so it can stand in for them.

    Args:
      embed_fn: not called.
      query: ``[H, W, C]``.
      reference_embeddings: None or ``[D]`` (gives ``[H, W]`` maps) or ``[K, D]`` (gives ``[K, H, W]``).
      key: PRNG key (map k from ``fold_in(key, k)``).
      options: a :class:`Random` (default ``Random()``).
      **overrides: options replacing those of ``options``.

    Returns:
      ``SaliencyResult(maps, passes, error)``: ``passes`` 0, ``error`` NaN.
    """
    if key is None:
        raise ValueError("random saliency needs key=")
    checks.check_key(key)
    query = checks.check_image(query, "query")
    if reference_embeddings is None:
        reference_embeddings = jax.numpy.zeros((1,))
    refs, single = checks.check_reference_embeddings(reference_embeddings)
    options = resolve(Random, options, overrides)
    return squeeze(_random_jit(None, query, refs, key, options), single)
