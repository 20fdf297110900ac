"""A handful of generated image pairs for the first demo (the shapes benchmark replaces it).

Each pair shows the same coloured square at different places on a grey, lightly noisy
background, plus one distractor disc of another colour in each image.
"""

from __future__ import annotations

import numpy as np

_COLORS = np.array([[220, 40, 40], [40, 160, 60], [40, 80, 220], [230, 200, 40], [200, 60, 200]], np.float32)


def _draw(rng: np.random.Generator, size: int, square_color: np.ndarray, disc_color: np.ndarray) -> np.ndarray:
    image = 127.0 + rng.normal(0.0, 6.0, (size, size, 3))
    side = size // 4
    y, x = rng.integers(0, size - side, 2)
    image[y:y + side, x:x + side] = square_color
    radius = size // 8
    for _ in range(20):  # place the disc away from the square
        cy, cx = rng.integers(radius, size - radius, 2)
        if abs(cy - (y + side / 2)) > side or abs(cx - (x + side / 2)) > side:
            break
    yy, xx = np.mgrid[:size, :size]
    image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = disc_color
    return np.clip(image, 0, 255).astype(np.uint8)


def toy_pairs(seed: int, num_pairs: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(queries, references)``, each ``[num_pairs, size, size, 3]`` uint8; pair i shares a square colour."""
    rng = np.random.default_rng(seed)
    queries, references = [], []
    for i in range(num_pairs):
        square = _COLORS[i % len(_COLORS)]
        discs = _COLORS[[(i + 1 + j) % len(_COLORS) for j in range(2)]]
        queries.append(_draw(rng, size, square, discs[0]))
        references.append(_draw(rng, size, square, discs[1]))
    return np.stack(queries), np.stack(references)
