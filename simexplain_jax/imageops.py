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

    SANE's insertion/deletion background: white for Polyvore, grey 127 for AwA2. Raises a
    ValueError for anything but one value or three values in [0, 255] (``300`` is no colour).
    """
    try:
        values = np.asarray(rgb, np.float64)
        values = np.broadcast_to(values, (3,))
    except (TypeError, ValueError):
        raise ValueError(f"a colour must be one value or 3 values (R, G, B) in [0, 255], got {rgb!r}") from None
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 255:
        raise ValueError(f"a colour must be one value or 3 values (R, G, B) in [0, 255], got {rgb!r}")
    return normalize_images(values.astype(np.float32))


def rise_kernel_1d(kernel_size: int = 11, sigma: float = 5.0, truncate: float = 4.0) -> np.ndarray:
    """The 1-D factor of RISE's blur kernel ``gkern(kernel_size, sigma)`` (float64, sums to 1).

    RISE builds its kernel by Gaussian-filtering a centred unit impulse on a
    ``kernel_size x kernel_size`` grid (SciPy's ``gaussian_filter``: a sampled Gaussian of radius
    ``int(truncate * sigma + 0.5)`` with half-sample symmetric ('reflect') boundaries). Because the
    filter runs one axis at a time and the impulse is the outer product of two 1-D impulses, that
    kernel is exactly ``outer(k, k)`` for the ``k`` returned here. When the radius exceeds the grid's
    half-width (20 against 5 for the defaults), the Gaussian's tails fold back in, so ``k`` is
    flatter than a Gaussian sampled on ``kernel_size`` points (by up to 3.3e-3 per 2-D tap).
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    radius = int(truncate * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * offsets.astype(np.float64) ** 2 / float(sigma) ** 2)
    weights /= weights.sum()
    # output[i] = sum_j weights[j] * impulse[reflect(i + offset_j)]; reflect repeats with period 2n
    n = kernel_size
    source = (np.arange(n)[:, None] + offsets[None, :]) % (2 * n)
    source = np.where(source >= n, 2 * n - 1 - source, source)
    return np.where(source == n // 2, weights[None, :], 0.0).sum(axis=1)


def rise_kernel(kernel_size: int = 11, sigma: float = 5.0) -> np.ndarray:
    """RISE's 2-D blur kernel ``gkern(kernel_size, sigma)``: ``[kernel_size, kernel_size]`` float64."""
    k = rise_kernel_1d(kernel_size, sigma)
    return np.outer(k, k)


def gaussian_blur(image: jax.Array, kernel_size: int = 11, sigma: float = 5.0) -> jax.Array:
    """Per-channel blur of ``image [H, W, C]`` with RISE's kernel and zero padding ('same' size).

    The defaults (``gkern(11, 5)``, padding 5 with zeros) are the original RISE insertion
    substrate. The kernel is separable (see ``rise_kernel_1d``), so this runs two 1-D passes.
    """
    k = jnp.asarray(rise_kernel_1d(kernel_size, sigma), jnp.float32)
    x = jnp.moveaxis(jnp.asarray(image, jnp.float32), -1, 0)[:, None]  # [C, 1, H, W]
    pad = kernel_size // 2
    hp = jax.lax.Precision.HIGHEST
    x = jax.lax.conv_general_dilated(x, k[None, None, :, None], (1, 1), [(pad, pad), (0, 0)], precision=hp)
    x = jax.lax.conv_general_dilated(x, k[None, None, None, :], (1, 1), [(0, 0), (pad, pad)], precision=hp)
    return jnp.moveaxis(x[:, 0], 0, -1)
