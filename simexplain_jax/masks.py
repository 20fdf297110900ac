"""Perturbation masks, generated on device from a PRNG key.

RISE masks follow the original RISE code (and SANE's copy of it): a binary ``s x s`` grid with
``P(1) = p`` is upsampled bilinearly to ``(s+1) * ceil(H/s)`` pixels per side (half-pixel
centres, mirror edges: exactly ``skimage.transform.resize(order=1, mode='reflect',
anti_aliasing=False)``) and cropped to ``H x W`` at a random offset in ``[0, ceil(H/s))`` per
axis. The upsample-and-crop is one pair of small matrix products per mask, so masks are made
inside compiled code, chunk by chunk, and never stored.

Mask ``i`` depends only on ``(key, i)`` (``jax.random.fold_in``), so the masks, and every map
built from them, do not depend on how they are chunked or sharded.

Samplers (``sampler=``): how the binary grid ``g_i`` (cells ``c = 0 .. s^2 - 1``) and the shift
``(dy_i, dx_i)`` of mask ``i`` are drawn. In every sampler each single mask has exactly the
i.i.d. distribution (each cell kept with probability ``p``, the shift uniform on
``[0, ceil(H/s)) x [0, ceil(W/s))``), so every RISE estimator keeps its expectation and its
normalisation (``sum_i M_i / N`` -> ``p`` per pixel: the upsampling rows sum to 1). They differ in
how masks are coupled inside a *block* of ``B`` consecutive indices ``i = B b .. B b + B - 1``
(``b = i // B``, position ``j = i % B``); blocks are independent, and everything a mask needs
comes from ``fold_in(key, i)`` or from the block key ``fold_in(fold_in(key, 1), b)``, so any mask
is computable from its index alone.

- ``"iid"`` (``B = 1``, the default; the original RISE): ``grid_key, shift_key =
  split(fold_in(key, i))``; ``g_ic = bernoulli(grid_key, p)``; ``dy = randint(shift_key, 0,
  ceil(H/s))``, ``dx = randint(fold_in(shift_key, 1), 0, ceil(W/s))``.
- ``"antithetic"`` (``B = 2``): from the block key, uniforms ``u_c`` and one shift; mask ``2b``
  keeps cell c when ``u_c < p``, mask ``2b + 1`` when ``1 - u_c < p``. At ``p = 1/2`` the pair is
  ``(M, 1 - M)`` exactly (same shift).
- ``"stratified"`` (Latin hypercube per cell and per shift axis, ``B = 2^ceil(log2(2 s^2))``, 128
  for s = 8): the block key gives, for every cell c and both shift axes, a random bijection
  ``pi_c`` of the positions ``0 .. B - 1`` (three rounds of ``x -> (a x + b) mod B`` with random
  odd ``a`` and uniform ``b``, each followed by ``x -> x xor (x >> ceil(log2(B) / 2))``), and mask
  j draws jitters ``v_cj ~ U[0, 1)`` from ``fold_in(block key, j)``. With the stratified uniform
  ``u_cj = (pi_c(j) + v_cj) / B``, mask j keeps cell c when ``u_cj < p``, so a cell is kept in
  ``floor(p B)`` or ``ceil(p B)`` masks of every block (exactly ``B/2`` at ``p = 1/2``); the
  shift is ``dy = floor(u_yj ceil(H/s))``, ``dx = floor(u_xj ceil(W/s))``.
- ``"orthogonal"`` (a randomised two-level orthogonal array of strength 3, same ``B``): with the
  Sylvester-Hadamard bits ``h(r, t) = popcount(r & t) mod 2`` for rows ``r`` and columns ``t``
  in ``0 .. B - 1``, the block key gives a random injection ``c -> t_c`` of the cells into the
  ``B / 2`` columns of odd popcount (any three of them are linearly independent over GF(2), which
  makes the array strength 3), a row bijection ``rho(j) = (a j + b) mod B`` (random odd a,
  uniform b), sign bits ``f_c ~ Bernoulli(1/2)`` and ONE shift for the whole block (drawn as the
  i.i.d. shift). With ``a_cj = h(rho(j), t_c) xor f_c``, mask j keeps cell c when
  ``a_cj = 0`` at ``p = 1/2``, and when ``(a_cj + v_cj) / 2 < p`` otherwise (``v_cj ~ U[0, 1)``
  from ``fold_in(block key, j)``). At ``p = 1/2`` every cell is kept in exactly ``B/2`` masks of a
  block, every pair of cells together in exactly ``B/4`` and every triple in exactly ``B/8``.
  Within a block the shift is fixed, so each pixel's mask value is a fixed weighting of the
  cells, and for a score that is a polynomial of degree <= 2 in the cells' on/off bits,
  ``sum_i s_i M_i(x)`` over a whole block is fixed by the block's shift alone (the noise left
  comes from higher-order interactions and from the one shift per block). This is the binary design of a digitally
  shifted Sobol-type net thresholded at 1/2 (whose first bits are parities of the index bits),
  with the columns chosen at random per block. For ``p != 1/2`` only the first binary digit of
  each cell's uniform is balanced.

Only the ``"iid"`` masks are the original RISE ones; a block is balanced only when whole, so
numbers of masks that are multiples of ``B`` use the designs fully.
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


SAMPLERS = ("iid", "antithetic", "stratified", "orthogonal")


def check_sampler(sampler) -> str:
    """``sampler`` if it names one of ``SAMPLERS``; raises ValueError naming the valid ones."""
    if not isinstance(sampler, str) or sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    return sampler


def sampler_block(sampler: str, grid_size: int) -> int:
    """``B``: the number of consecutive masks a sampler couples (1 for ``"iid"``, 2 for
    ``"antithetic"``, ``2^ceil(log2(2 s^2))`` for ``"stratified"`` and ``"orthogonal"``: 128 at s = 8)."""
    check_sampler(sampler)
    if sampler == "iid":
        return 1
    if sampler == "antithetic":
        return 2
    return 1 << (2 * int(grid_size) ** 2 - 1).bit_length()  # the smallest power of two >= 2 s^2


def rise_grid_fn(image_shape: Sequence[int], *, key: jax.Array, grid_size: int = 8, p: float = 0.5,
                 sampler: str = "iid") -> Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]]:
    """Returns ``grids_for(indices [B]) -> (grids [B, s, s] float32 in {0, 1}, dy [B], dx [B])``:
    the binary grid and shift of RISE mask ``i`` under ``sampler`` (see the module docstring).
    Traceable."""
    height, width = _check_image_shape(image_shape)
    check_sampler(sampler)
    cell_h, cell_w = math.ceil(height / grid_size), math.ceil(width / grid_size)
    cells = grid_size * grid_size
    block = sampler_block(sampler, grid_size)
    # the B / 2 columns of odd weight: any three of them are linearly independent over GF(2)
    odd_columns = jnp.asarray([t for t in range(1, block) if bin(t).count("1") % 2], jnp.int32)

    def iid(index):
        grid_key, shift_key = jax.random.split(jax.random.fold_in(key, index))
        grid = jax.random.bernoulli(grid_key, p, (grid_size, grid_size))
        dy = jax.random.randint(shift_key, (), 0, cell_h)
        dx = jax.random.randint(jax.random.fold_in(shift_key, 1), (), 0, cell_w)
        return grid, dy, dx

    def antithetic(index):
        grid_key, shift_key = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, 1), index // 2))
        u = jax.random.uniform(grid_key, (grid_size, grid_size))
        grid = jnp.where(index % 2 == 0, u, 1.0 - u) < p
        dy = jax.random.randint(shift_key, (), 0, cell_h)
        dx = jax.random.randint(jax.random.fold_in(shift_key, 1), (), 0, cell_w)
        return grid, dy, dx

    bits_per_block = max(block.bit_length() - 1, 1)  # B = 2^bits

    def position(position_key, j, shape=(), rounds=1):
        """A random bijection of the block's positions ``0 .. B - 1`` at ``j`` (one per entry of
        ``shape``): ``rounds`` of ``x -> (a x + b) mod B`` (random odd a, uniform b), each followed
        by ``x -> x xor (x >> ceil(bits / 2))``; uniform over the positions for every j."""
        x = jnp.broadcast_to(jnp.asarray(j, jnp.int32), shape)
        for round_key in jax.random.split(position_key, rounds):
            a_key, b_key = jax.random.split(round_key)
            a = 2 * jax.random.randint(a_key, shape, 0, max(block // 2, 1)) + 1
            x = (a * x + jax.random.randint(b_key, shape, 0, block)) % block
            if rounds > 1:
                x = x ^ (x >> ((bits_per_block + 1) // 2))
        return x

    def stratified(index):
        j = index % block
        grid_key, jitter_key, shift_key = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, 1),
                                                                              index // block), 3)
        jitter = jax.random.uniform(jax.random.fold_in(jitter_key, j), (cells + 2,))
        strata = (position(grid_key, j, (cells + 2,), rounds=3) + jitter) / block  # stratified uniforms in [0, 1)
        grid = (strata[:cells] < p).reshape(grid_size, grid_size)
        dy = jnp.minimum(jnp.floor(strata[cells] * cell_h).astype(jnp.int32), cell_h - 1)
        dx = jnp.minimum(jnp.floor(strata[cells + 1] * cell_w).astype(jnp.int32), cell_w - 1)
        return grid, dy, dx

    def orthogonal(index):
        j = index % block
        column_key, row_key, flip_key, jitter_key, shift_key = jax.random.split(
            jax.random.fold_in(jax.random.fold_in(key, 1), index // block), 5)
        columns = jax.random.permutation(column_key, odd_columns)[:cells]
        row = position(row_key, j)
        flips = jax.random.bernoulli(flip_key, 0.5, (cells,)).astype(jnp.int32)
        bits = (jax.lax.population_count(row & columns) + flips) % 2  # a strength-3 orthogonal array
        # p may be traced: at p = 1/2 the grid is the array's bits themselves
        jittered = (bits + jax.random.uniform(jax.random.fold_in(jitter_key, j), (cells,))) / 2 < p
        grid = jnp.where(jnp.asarray(p) == 0.5, bits == 0, jittered)
        dy = jax.random.randint(shift_key, (), 0, cell_h)  # one shift for the whole block
        dx = jax.random.randint(jax.random.fold_in(shift_key, 1), (), 0, cell_w)
        return grid.reshape(grid_size, grid_size), dy, dx

    draw = dict(iid=iid, antithetic=antithetic, stratified=stratified, orthogonal=orthogonal)[sampler]

    def grids_for(indices: jax.Array):
        grid, dy, dx = jax.vmap(draw)(jnp.asarray(indices, jnp.int32))
        return grid.astype(jnp.float32), dy, dx

    return grids_for


def rise_mask_fn(image_shape: Sequence[int], *, key: jax.Array, grid_size: int = 8, p: float = 0.5,
                 sampler: str = "iid") -> MaskFn:
    """Returns ``masks_for(indices [B]) -> [B, H, W]``: RISE mask ``i`` of ``sampler`` (the grid
    and shift of :func:`rise_grid_fn`, upsampled and cropped).

    Traceable: call it inside jit (the engine does, once per chunk).
    """
    height, width = _check_image_shape(image_shape)
    cell_h, cell_w = math.ceil(height / grid_size), math.ceil(width / grid_size)
    up_h = jnp.asarray(bilinear_upsample_matrix(grid_size, (grid_size + 1) * cell_h))
    up_w = jnp.asarray(bilinear_upsample_matrix(grid_size, (grid_size + 1) * cell_w))
    grids_for = rise_grid_fn(image_shape, key=key, grid_size=grid_size, p=p, sampler=sampler)

    def one_mask(grid, dy, dx):
        rows = jax.lax.dynamic_slice_in_dim(up_h, dy, height, axis=0)  # [H, s]
        cols = jax.lax.dynamic_slice_in_dim(up_w, dx, width, axis=0)  # [W, s]
        return jnp.matmul(jnp.matmul(rows, grid, precision=_HIGHEST), cols.T, precision=_HIGHEST)

    def masks_for(indices: jax.Array) -> jax.Array:
        return jax.vmap(one_mask)(*grids_for(indices))

    return masks_for


def rise_masks(image_shape: Sequence[int], *, key: jax.Array, num_masks: int = 2000, grid_size: int = 8,
               p: float = 0.5, sampler: str = "iid") -> jax.Array:
    """``num_masks`` RISE masks ``[N, H, W]`` float32 in [0, 1] (see the module docstring).

    ``image_shape`` is ``(H, W)`` or ``(H, W, C)``. Equal to the masks the saliency engine
    generates from the same key and sampler, so ``rise(..., key=k)`` equals
    ``rise(..., masks=rise_masks(query.shape, key=k, sampler="orthogonal", ...))`` (``Rise``'s
    default sampler; this function's default stays ``"iid"``, the original RISE masks).
    """
    num_masks, grid_size, p = check_rise_options(num_masks, grid_size, p)
    shape = _check_image_shape(image_shape)
    return _rise_masks_jit(key, np.float32(p), num_masks=num_masks, grid_size=grid_size, image_shape=shape,
                           sampler=check_sampler(sampler))


@jax.jit(static_argnames=("num_masks", "grid_size", "image_shape", "sampler"))
def _rise_masks_jit(key, p, *, num_masks, grid_size, image_shape, sampler):  # p traced: a sweep compiles once
    return rise_mask_fn(image_shape, key=key, grid_size=grid_size, p=p, sampler=sampler)(
        jnp.arange(num_masks, dtype=jnp.int32))


def rise_grids(image_shape: Sequence[int], *, key: jax.Array, num_masks: int = 2000, grid_size: int = 8,
               p: float = 0.5, sampler: str = "iid") -> tuple[jax.Array, jax.Array, jax.Array]:
    """The binary grids ``[N, s, s]`` and shifts ``dy [N]``, ``dx [N]`` behind :func:`rise_masks`."""
    num_masks, grid_size, p = check_rise_options(num_masks, grid_size, p)
    shape = _check_image_shape(image_shape)
    return _rise_grids_jit(key, np.float32(p), num_masks=num_masks, grid_size=grid_size, image_shape=shape,
                           sampler=check_sampler(sampler))


@jax.jit(static_argnames=("num_masks", "grid_size", "image_shape", "sampler"))
def _rise_grids_jit(key, p, *, num_masks, grid_size, image_shape, sampler):  # p traced: a sweep compiles once
    return rise_grid_fn(image_shape, key=key, grid_size=grid_size, p=p, sampler=sampler)(
        jnp.arange(num_masks, dtype=jnp.int32))


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
