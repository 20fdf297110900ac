"""What every second-order (pair) method returns: the correspondence and its first-order maps."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


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


def cell_box(row: int, col: int, grid: tuple[int, int], shape) -> tuple[int, int, int, int]:
    """The pixels of cell ``(row, col)`` of a ``grid`` of equal bands over an image of ``shape``
    (pixel y is in cell row ``floor(y h / H)``, the rule of the mask grids and of a stride-aligned
    feature grid): ``(ymin, xmin, ymax, xmax)``, max exclusive."""
    (h, w), (height, width) = grid, tuple(shape[:2])

    def band(index, cells, size):  # the first pixel y with floor(y cells / size) >= index
        return -(-index * size // cells)

    return (int(band(row, h, height)), int(band(col, w, width)), int(band(row + 1, h, height)),
            int(band(col + 1, w, width)))


class CellPair(NamedTuple):
    """One of the strongest cell pairs of a correspondence.

    Attributes:
      query_box: ``(ymin, xmin, ymax, xmax)`` of the query cell, in pixels (max exclusive).
      reference_box: the same for the reference cell.
      contribution: its entry of the correspondence.
      share: ``contribution`` over the correspondence's sum: its share of the similarity for an
        exact decomposition (``pooled_pair``), of the estimated total otherwise.
    """

    query_box: tuple[int, int, int, int]
    reference_box: tuple[int, int, int, int]
    contribution: float
    share: float


def strongest_pairs(correspondence, query_shape, reference_shape, k: int = 3) -> list[CellPair]:
    """The ``k`` strongest cell pairs of one correspondence ``[hq, wq, hr, wr]`` as pixel boxes of
    images of ``query_shape`` and ``reference_shape``, strongest first."""
    corr = np.asarray(correspondence, np.float64)
    if corr.ndim != 4:
        raise ValueError(f"correspondence must be one pair's [hq, wq, hr, wr], got shape {corr.shape}")
    k = min(int(k), corr.size)
    order = np.argsort(-corr.reshape(-1), kind="stable")[:k]
    total = corr.sum()
    out = []
    for index in order:
        qr, qc, rr, rc = (int(i) for i in np.unravel_index(index, corr.shape))
        value = float(corr.reshape(-1)[index])
        out.append(CellPair(cell_box(qr, qc, corr.shape[:2], query_shape),
                            cell_box(rr, rc, corr.shape[2:], reference_shape), value,
                            float(value / total) if total != 0 else float("nan")))
    return out
