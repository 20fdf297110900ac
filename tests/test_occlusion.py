import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import simexplain_jax as sx


def np_cosine(a, b):
    return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def upsample_align_corners(grid, height, width):
    ys = np.arange(height) * (grid.shape[0] - 1) / (height - 1)
    xs = np.arange(width) * (grid.shape[1] - 1) / (width - 1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return ndimage.map_coordinates(grid, [yy, xx], order=1)


def naive_sliding_window(w, query, ref, window, stride, padding):
    h, wd = query.shape[:2]
    ys = range(-padding, h + padding - window + 1, stride)
    xs = range(-padding, wd + padding - window + 1, stride)
    grid = np.zeros((len(ys), len(xs)))
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            occluded = query.copy()
            occluded[max(y, 0):y + window, max(x, 0):x + window] = 0
            grid[i, j] = 1 - np_cosine(occluded.reshape(-1).astype(np.float64) @ w, ref)
    return upsample_align_corners(grid, h, wd)


def test_sliding_window_equals_naive_loop(linear_model):
    embed, w = linear_model
    rng = np.random.default_rng(0)
    query = rng.normal(size=(16, 16, 3)).astype(np.float32)
    refs = rng.normal(size=(2, 8)).astype(np.float32)
    got = sx.saliency.sliding_window(embed, query, refs, window=6, stride=2, padding=2, batch_size=5).maps
    assert got.shape == (2, 16, 16)
    for k in range(2):
        np.testing.assert_allclose(got[k], naive_sliding_window(w, query, refs[k], 6, 2, 2), rtol=1e-4, atol=1e-5)


def test_reference_geometry_runs_at_112px():
    w = jnp.ones((112 * 112 * 3, 4)) / 1000.0
    embed = lambda x: x.reshape(x.shape[0], -1) @ w  # noqa: E731
    query = jnp.ones((112, 112, 3))
    maps = sx.saliency.sliding_window(embed, query, embed(query[None])[0]).maps  # the reference code crashes here
    assert maps.shape == (112, 112) and np.all(np.isfinite(maps))


def test_region_model_puts_mass_in_its_region(region_model):
    # the query matched with itself: occluding anything outside the region leaves the similarity at 1
    reference = region_model(region_model.query[None])[0]
    maps = sx.saliency.sliding_window(region_model, region_model.query, reference, window=4, stride=1, padding=2).maps
    positive = np.maximum(np.asarray(maps), 0)
    assert positive[region_model.region].sum() >= 0.9 * positive.sum()


def test_sliding_window_variable_equals_mean_of_occluded_references(linear_model):
    embed, w = linear_model
    rng = np.random.default_rng(1)
    query = rng.normal(size=(16, 16, 3)).astype(np.float32)
    reference = rng.normal(size=(16, 16, 3)).astype(np.float32)
    got = sx.saliency.sliding_window_variable(embed, query, reference, window=6, stride=2, padding=2,
                                              reference_window=8, reference_stride=4, batch_size=7).maps
    refs = []
    for y in range(0, 16 - 8 + 1, 4):
        for x in range(0, 16 - 8 + 1, 4):
            occluded = reference.copy()
            occluded[y:y + 8, x:x + 8] = 0
            refs.append(occluded.reshape(-1).astype(np.float64) @ w)
    naive = np.mean([naive_sliding_window(w, query, r, 6, 2, 2) for r in refs], axis=0)
    np.testing.assert_allclose(got, naive, rtol=1e-4, atol=1e-5)


def test_batch_size_invariance(linear_model):
    embed, _ = linear_model
    query = jax.random.normal(jax.random.key(0), (16, 16, 3))
    ref = jax.random.normal(jax.random.key(1), (8,))
    maps = [sx.saliency.sliding_window(embed, query, ref, window=4, stride=2, padding=1, batch_size=b).maps
            for b in (1, 7, 256)]
    for other in maps[1:]:
        np.testing.assert_allclose(other, maps[0], rtol=1e-6, atol=1e-7)


def test_bad_geometry_raises(linear_model):
    embed, _ = linear_model
    with pytest.raises(ValueError, match="window"):
        sx.saliency.sliding_window(embed, np.ones((16, 16, 3)), np.ones(8), window=32, padding=0)
    with pytest.raises(ValueError, match="reference_embeddings"):
        sx.saliency.sliding_window(embed, np.ones((16, 16, 3)), np.ones(3), window=4)
    with pytest.raises(ValueError, match="reference"):
        sx.saliency.sliding_window_variable(embed, np.ones((16, 16, 3)), np.ones((16, 16, 2)), window=4)
