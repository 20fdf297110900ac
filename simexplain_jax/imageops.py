"""Small image operations used by the perturbation protocols (pure JAX, jit-able)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize_images(images: np.ndarray) -> np.ndarray:
    """uint8 ``[..., H, W, 3]`` -> float32 with ImageNet mean/std (0 is the mean colour)."""
    return ((np.asarray(images, np.float32) / 255.0) - IMAGENET_MEAN) / IMAGENET_STD


def normalized_color(rgb) -> np.ndarray:
    """A uint8-scale colour (e.g. grey ``127`` or white ``255``) in normalised space: ``[3]``.

    SANE's insertion/deletion background: white for Polyvore, grey 127 for AwA2.
    """
    return normalize_images(np.broadcast_to(np.asarray(rgb, np.float32), (3,)))



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
