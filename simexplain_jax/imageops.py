"""Small image operations used by the perturbation protocols (pure JAX, jit-able)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def gaussian_kernel_1d(kernel_size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of odd length ``kernel_size``."""
    x = np.arange(kernel_size, dtype=np.float64) - (kernel_size - 1) / 2
    k = np.exp(-(x**2) / (2.0 * sigma**2))
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(image: jax.Array, kernel_size: int = 11, sigma: float = 5.0) -> jax.Array:
    """Per-channel Gaussian blur of ``image [H, W, C]`` with zero padding ('same' size).

    The defaults (11 taps, sigma 5, zero padding) are the original RISE insertion substrate.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    k = jnp.asarray(gaussian_kernel_1d(kernel_size, sigma))
    x = jnp.moveaxis(jnp.asarray(image, jnp.float32), -1, 0)[:, None]  # [C, 1, H, W]
    pad = kernel_size // 2
    hp = jax.lax.Precision.HIGHEST
    x = jax.lax.conv_general_dilated(x, k[None, None, :, None], (1, 1), [(pad, pad), (0, 0)], precision=hp)
    x = jax.lax.conv_general_dilated(x, k[None, None, None, :], (1, 1), [(0, 0), (pad, pad)], precision=hp)
    return jnp.moveaxis(x[:, 0], 0, -1)
