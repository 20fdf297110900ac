"""What every second-order (pair) method returns: the correspondence and its first-order maps."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class PairResult(NamedTuple):
    """Second-order explanation of one pair, or of P pairs with a leading P axis.

    Attributes:
      correspondence: ``[hq, wq, hr, wr]``: the contribution of each (query cell, reference cell)
        pair to the similarity.
      query_map: ``[H, W]``: the correspondence's row sums, upsampled to the query's size.
      reference_map: ``[H', W']``: its column sums, upsampled to the reference's size.
      similarity: ``[]``: the model's similarity of the intact pair.
      passes: forward passes spent per pair.
    """

    correspondence: jax.Array
    query_map: jax.Array
    reference_map: jax.Array
    similarity: jax.Array
    passes: int


def first_order_maps(correspondence: jax.Array, query_shape, reference_shape) -> tuple[jax.Array, jax.Array]:
    """Row and column sums of ``correspondence [hq, wq, hr, wr]``, upsampled bilinearly (half-pixel
    centres) to ``query_shape[:2]`` and ``reference_shape[:2]``."""
    query_cells = correspondence.sum(axis=(2, 3))
    reference_cells = correspondence.sum(axis=(0, 1))
    return (jax.image.resize(query_cells, tuple(query_shape[:2]), "linear"),
            jax.image.resize(reference_cells, tuple(reference_shape[:2]), "linear"))


def top_correspondences(correspondence: jax.Array, k: int = 3) -> tuple[jax.Array, jax.Array]:
    """The ``k`` strongest cell pairs: indices ``[k, 4]`` (query row, column, reference row, column)
    and their contributions ``[k]``, strongest first."""
    flat = correspondence.reshape(-1)
    values, order = jax.lax.top_k(flat, k)
    return jnp.stack(jnp.unravel_index(order, correspondence.shape), axis=-1), values
