"""Black-box second-order RISE (the cross estimator) against a plain implementation and an analytic case."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simexplain_jax as sx
from simexplain_jax.saliency import rise_pair
from simexplain_jax.similarity import dot

SIZE, GRID = 16, 4


def _model():
    w = jax.random.normal(jax.random.key(0), (SIZE * SIZE * 3, 8)) / 20

    def embed(images):
        return jnp.tanh(images.reshape(images.shape[0], -1) @ w)

    return embed


def _images(seed, count=None):
    shape = (SIZE, SIZE, 3) if count is None else (count, SIZE, SIZE, 3)
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _plain(embed, q, r, key, num_masks, p, sampler="iid", centering="mean"):
    """The definition, written out: all N x N scores, masks pooled to cells with loops."""
    masks_q = np.asarray(sx.masks.rise_masks(q.shape, key=jax.random.fold_in(key, 0), num_masks=num_masks,
                                             grid_size=GRID, p=p, sampler=sampler))
    masks_r = np.asarray(sx.masks.rise_masks(r.shape, key=jax.random.fold_in(key, 1), num_masks=num_masks,
                                             grid_size=GRID, p=p, sampler=sampler))
    eq = np.asarray(embed(jnp.asarray(q[None] * masks_q[..., None])))
    er = np.asarray(embed(jnp.asarray(r[None] * masks_r[..., None])))
    scores = np.asarray(sx.similarity.cosine(eq[:, None], er[None]))  # [N, N]
    band = SIZE // GRID

    def pooled(masks):
        out = np.zeros((num_masks, GRID * GRID))
        for n in range(num_masks):
            for a in range(GRID):
                for b in range(GRID):
                    out[n, a * GRID + b] = masks[n, a * band:(a + 1) * band, b * band:(b + 1) * band].mean()
        return out

    cells_q, cells_r = pooled(masks_q), pooled(masks_r)
    if centering == "mean":
        cells_q, cells_r = cells_q - cells_q.mean(axis=0), cells_r - cells_r.mean(axis=0)
    else:
        cells_q, cells_r = cells_q - p, cells_r - p
    corr = cells_q.T @ scores @ cells_r / num_masks ** 2
    return corr.reshape(GRID, GRID, GRID, GRID)


@pytest.mark.parametrize("sampler,p,centering", [("orthogonal", 0.5, "mean"), ("iid", 0.3, "p")])
def test_equals_the_plain_definition(sampler, p, centering):
    embed = _model()
    q, r, key = _images(0), _images(1), jax.random.key(4)
    result = rise_pair(embed, q, r, key=key, num_masks=48, grid_size=GRID, p=p, batch_size=16, sampler=sampler,
                       centering=centering)
    expected = _plain(embed, q, r, key, 48, p, sampler, centering)
    np.testing.assert_allclose(result.correspondence, expected, rtol=1e-4, atol=1e-7)
    assert result.passes == 96
    np.testing.assert_allclose(result.similarity, sx.similarity.cosine(*embed(jnp.stack([q, r]))), rtol=1e-6)


def test_chunk_size_and_batching_do_not_change_the_maps():
    """Pair 1 of a batch (key fold_in(key, 1), chunks of 7 masks) equals that pair alone (one chunk of 24)."""
    embed = _model()
    q, r, key = _images(2, 3), _images(3, 3), jax.random.key(5)
    batched = rise_pair(embed, q, r, key=key, num_masks=24, grid_size=GRID, batch_size=7)
    single = rise_pair(embed, q[1], r[1], key=jax.random.fold_in(key, 1), num_masks=24, grid_size=GRID, batch_size=24)
    np.testing.assert_allclose(batched.correspondence[1], single.correspondence, rtol=1e-5, atol=1e-8)
    assert batched.query_map.shape == (3, SIZE, SIZE) and single.query_map.shape == (SIZE, SIZE)


def test_finds_the_matching_cells():
    """Analytic: a translation-invariant embedding (global mean of channel 0, a constant) scored by the dot
    product, so ``S = k_q k_r / 256 + c`` with k the kept share of each image's object; the covariance
    peaks at the cell of the query's object and the cell of the reference's."""
    def embed(images):
        return jnp.stack([images[..., 0].mean(axis=(1, 2)), jnp.full(images.shape[:1], 0.1)], axis=-1)

    q, r = np.zeros((SIZE, SIZE, 3), np.float32), np.zeros((SIZE, SIZE, 3), np.float32)
    q[4:8, 12:16, 0] = 1.0  # cell (1, 3)
    r[8:12, 0:4, 0] = 1.0  # cell (2, 0)
    result = rise_pair(embed, q, r, key=jax.random.key(0), num_masks=400, grid_size=GRID, similarity=dot)
    corr = np.asarray(result.correspondence)
    assert np.unravel_index(np.argmax(corr), corr.shape) == (1, 3, 2, 0)
    qy, qx = np.unravel_index(np.argmax(result.query_map), (SIZE, SIZE))
    ry, rx = np.unravel_index(np.argmax(result.reference_map), (SIZE, SIZE))
    assert 4 <= qy < 8 and 12 <= qx < 16 and 8 <= ry < 12 and 0 <= rx < 4


def test_bad_arguments_are_refused():
    embed, q, r = _model(), _images(0), _images(1)
    with pytest.raises(ValueError, match="key="):
        rise_pair(embed, q, r, key=None)
    with pytest.raises(ValueError, match="one image per query"):
        rise_pair(embed, _images(0, 2), _images(1, 3), key=jax.random.key(0))
    with pytest.raises(ValueError, match="centering"):
        rise_pair(embed, q, r, key=jax.random.key(0), centering="median")
    with pytest.raises(ValueError, match="grid_size"):
        rise_pair(embed, q, r, key=jax.random.key(0), grid_size=32)


def test_options_object_and_a_sweep_over_p_compiles_once():
    from simexplain_jax.saliency._rise_pair import RisePair, _rise_pair_jit

    embed, q, r, key = _model(), _images(0), _images(1), jax.random.key(2)
    options = RisePair(num_masks=16, grid_size=GRID, batch_size=16)
    by_object = rise_pair(embed, q, r, key=key, options=options)
    by_keywords = rise_pair(embed, q, r, key=key, num_masks=16, grid_size=GRID, batch_size=16)
    np.testing.assert_array_equal(by_object.correspondence, by_keywords.correspondence)
    before = _rise_pair_jit._cache_size()
    for p in (0.3, 0.4, 0.6):
        rise_pair(embed, q, r, key=key, options=options, p=p)
    assert _rise_pair_jit._cache_size() == before
    with pytest.raises(ValueError, match="unknown option"):
        rise_pair(embed, q, r, key=key, num_mask=16)
