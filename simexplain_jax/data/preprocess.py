"""Image preprocessing shared by the pipeline, the experiments and the metrics' backgrounds."""

from __future__ import annotations

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
