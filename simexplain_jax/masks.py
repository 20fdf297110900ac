"""Perturbation masks, generated on device from a PRNG key.

RISE masks follow the original RISE code (and SANE's copy of it): a binary ``s x s`` grid with
``P(1) = p`` is upsampled bilinearly to ``(s+1) * ceil(H/s)`` pixels per side (half-pixel
centres, mirror edges: exactly ``skimage.transform.resize(order=1, mode='reflect',
anti_aliasing=False)``) and cropped to ``H x W`` at a random offset in ``[0, ceil(H/s))`` per
axis. The upsample-and-crop is one pair of small matrix products per mask, so masks are made
inside compiled code, chunk by chunk, and never stored.

Mask ``i`` depends only on ``(key, i)`` (``jax.random.fold_in``), so the masks, and every map
built from them, do not depend on how they are chunked or sharded.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

MaskFn = Callable[[jax.Array], jax.Array]  # indices [B] int32 -> masks [B, H, W] float32

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_image_shape(image_shape: Sequence[int], name: str = "image_shape") -> tuple[int, int]:
    shape = tuple(int(d) for d in image_shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"{name} must be (H, W) or (H, W, C) with positive sizes, got {tuple(image_shape)}")
    return shape[0], shape[1]


def _integer(value, name: str, low: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_probability(p, name: str = "p") -> float:
    """``p`` as a Python float in (0, 1]: a Python, NumPy or JAX real scalar (not a bool)."""
    if isinstance(p, (bool, np.bool_)) or np.ndim(p) != 0 or not np.issubdtype(np.asarray(p).dtype, np.number):
        raise ValueError(f"{name} must be a probability in (0, 1], got {p!r}")
    value = float(p)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be a probability in (0, 1], got {p!r}")
    return value


def check_rise_options(num_masks: int, grid_size: int, p: float) -> tuple[int, int, float]:
    """``(num_masks, grid_size, p)`` as Python numbers; raises ValueError naming the offending argument."""
    return _integer(num_masks, "num_masks"), _integer(grid_size, "grid_size"), check_probability(p)


def bilinear_upsample_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out_size, in_size]`` matrix of bilinear interpolation with half-pixel centres and
    mirror ('reflect' in scikit-image) edges: ``U @ x`` resizes a 1-D signal ``x``."""
    u = np.zeros((out_size, in_size), np.float64)
    pos = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    for idx, w in ((lo, 1.0 - frac), (lo + 1, frac)):
        if in_size == 1:
            idx = np.zeros_like(idx)
        else:
            period = 2 * (in_size - 1)
            idx = np.abs(np.mod(idx, period))
            idx = np.where(idx > in_size - 1, period - idx, idx)
        np.add.at(u, (np.arange(out_size), idx), w)
    return u.astype(np.float32)


def align_corners_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out_size, in_size]`` bilinear interpolation with aligned corners (first and last samples
    coincide with the first and last pixels): the sliding-window grid's upsampling."""
    u = np.zeros((out_size, in_size), np.float64)
    if in_size == 1 or out_size == 1:
        u[:, 0] = 1.0
        return u.astype(np.float32)
    pos = np.arange(out_size) * (in_size - 1) / (out_size - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), in_size - 2)
    frac = pos - lo
    np.add.at(u, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(u, (np.arange(out_size), lo + 1), frac)
    return u.astype(np.float32)


def rise_mask_fn(image_shape: Sequence[int], *, key: jax.Array, grid_size: int = 8, p: float = 0.5) -> MaskFn:
    """Returns ``masks_for(indices [B]) -> [B, H, W]``: RISE mask ``i`` from ``fold_in(key, i)``.

    Traceable: call it inside jit (the engine does, once per chunk).
    """
    height, width = _check_image_shape(image_shape)
    cell_h, cell_w = math.ceil(height / grid_size), math.ceil(width / grid_size)
    up_h = jnp.asarray(bilinear_upsample_matrix(grid_size, (grid_size + 1) * cell_h))
    up_w = jnp.asarray(bilinear_upsample_matrix(grid_size, (grid_size + 1) * cell_w))

    def one_mask(index: jax.Array) -> jax.Array:
        grid_key, shift_key = jax.random.split(jax.random.fold_in(key, index))
        grid = jax.random.bernoulli(grid_key, p, (grid_size, grid_size)).astype(jnp.float32)
        dy = jax.random.randint(shift_key, (), 0, cell_h)
        dx = jax.random.randint(jax.random.fold_in(shift_key, 1), (), 0, cell_w)
        rows = jax.lax.dynamic_slice_in_dim(up_h, dy, height, axis=0)  # [H, s]
        cols = jax.lax.dynamic_slice_in_dim(up_w, dx, width, axis=0)  # [W, s]
        return jnp.matmul(jnp.matmul(rows, grid, precision=_HIGHEST), cols.T, precision=_HIGHEST)

    return jax.vmap(one_mask)


def rise_masks(image_shape: Sequence[int], *, key: jax.Array, num_masks: int = 2000, grid_size: int = 8,
               p: float = 0.5) -> jax.Array:
    """``num_masks`` RISE masks ``[N, H, W]`` float32 in [0, 1] (see the module docstring).

    ``image_shape`` is ``(H, W)`` or ``(H, W, C)``. Equal to the masks the saliency engine
    generates from the same key, so ``rise(..., key=k)`` equals
    ``rise(..., masks=rise_masks(query.shape, key=k, ...))``.
    """
    num_masks, grid_size, p = check_rise_options(num_masks, grid_size, p)
    shape = _check_image_shape(image_shape)
    return _rise_masks_jit(key, num_masks=num_masks, grid_size=grid_size, p=p, image_shape=shape)


@jax.jit(static_argnames=("num_masks", "grid_size", "p", "image_shape"))
def _rise_masks_jit(key, *, num_masks, grid_size, p, image_shape):
    return rise_mask_fn(image_shape, key=key, grid_size=grid_size, p=p)(jnp.arange(num_masks, dtype=jnp.int32))


def sliding_window_grid(size: int, window: int, stride: int, padding: int) -> np.ndarray:
    """Top-left corners along one axis: from ``-padding`` while the window fits the padded canvas."""
    count = (size + 2 * padding - window) // stride + 1
    if count < 1:
        raise ValueError(
            f"window={window} does not fit an image side of {size} px with padding={padding}"
        )
    return -padding + stride * np.arange(count)


def check_window_options(window: int, stride: int, padding: int) -> tuple[int, int, int]:
    """``(window, stride, padding)`` as Python ints; raises ValueError naming the offending argument."""
    return _integer(window, "window"), _integer(stride, "stride"), _integer(padding, "padding", 0)


def occlusion_mask_fn(image_shape: Sequence[int], *, window: int = 32, stride: int = 4,
                      padding: int = 8) -> tuple[MaskFn, tuple[int, int]]:
    """Sliding-window occlusion masks (1 = kept, 0 = occluded), row-major over the window grid.

    Returns ``(masks_for, (grid_h, grid_w))``. The reference geometry (window 32, stride 4,
    padding 8) gives a 25 x 25 grid at 112 px; windows are clipped to the image.
    """
    check_window_options(window, stride, padding)
    height, width = _check_image_shape(image_shape)
    ys = jnp.asarray(sliding_window_grid(height, window, stride, padding))
    xs = jnp.asarray(sliding_window_grid(width, window, stride, padding))
    rows = jnp.arange(height)
    cols = jnp.arange(width)

    def one_mask(index: jax.Array) -> jax.Array:
        y0 = ys[index // xs.shape[0]]
        x0 = xs[index % xs.shape[0]]
        in_y = (rows >= y0) & (rows < y0 + window)
        in_x = (cols >= x0) & (cols < x0 + window)
        return 1.0 - (in_y[:, None] & in_x[None, :]).astype(jnp.float32)

    def masks_for(indices: jax.Array) -> jax.Array:
        indices = jnp.clip(indices, 0, ys.shape[0] * xs.shape[0] - 1)
        return jax.vmap(one_mask)(indices)

    return masks_for, (int(ys.shape[0]), int(xs.shape[0]))


def occlusion_masks(image_shape: Sequence[int], *, window: int = 32, stride: int = 4, padding: int = 8) -> jax.Array:
    """All sliding-window occlusion masks ``[grid_h * grid_w, H, W]`` (row-major over the grid)."""
    masks_for, (gh, gw) = occlusion_mask_fn(image_shape, window=window, stride=stride, padding=padding)
    return masks_for(jnp.arange(gh * gw, dtype=jnp.int32))
