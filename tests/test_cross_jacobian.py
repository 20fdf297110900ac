"""The integrated cross-Jacobian: exact for a linear embedding, complete for a non-linear one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simexplain_jax.saliency import integrated_cross_jacobian
from simexplain_jax.similarity import cosine, dot, l2_normalize

SIZE, GRID = 8, 4


def _images(seed, count=None):
    shape = (SIZE, SIZE, 3) if count is None else (count, SIZE, SIZE, 3)
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_linear_embedding_is_exact_and_equals_the_plain_sum():
    """e(x) = W vec(x), dot similarity: R_dc = sum over cell c of x * W_d, and sum C = e(q) . e(r)."""
    w = np.random.default_rng(0).normal(size=(SIZE * SIZE * 3, 5)).astype(np.float32)

    def embed(images):
        return images.reshape(images.shape[0], -1) @ w

    q, r = _images(1), _images(2)
    result = integrated_cross_jacobian(embed, q, r, num_steps=3, grid_size=GRID, similarity=dot)
    band = SIZE // GRID
    wd = w.reshape(SIZE, SIZE, 3, 5)

    def plain(x):
        out = np.zeros((5, GRID, GRID))
        for d in range(5):
            for a in range(GRID):
                for b in range(GRID):
                    cell = (slice(a * band, (a + 1) * band), slice(b * band, (b + 1) * band))
                    out[d, a, b] = np.sum(x[cell] * wd[cell][..., d])
        return out

    expected = np.einsum("dab,dce->abce", plain(q), plain(r))
    np.testing.assert_allclose(result.correspondence, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.correspondence.sum(), (q.reshape(-1) @ w) @ (r.reshape(-1) @ w), rtol=1e-4)
    assert result.passes == 2 * 3 * 5


def test_cosine_completeness_for_a_nonlinear_model():
    """Sum C = (e(q) - e(b)) . (e(r) - e(b)) for normalised e, to the path integral's accuracy."""
    w = jax.random.normal(jax.random.key(0), (SIZE * SIZE * 3, 6)) / 10

    def embed(images):
        return jnp.tanh(images.reshape(images.shape[0], -1) @ w + 0.3)

    q, r = _images(3, 2), _images(4, 2)
    result = integrated_cross_jacobian(embed, q, r, num_steps=64, grid_size=GRID, batch_size=16)
    e = l2_normalize(embed(jnp.concatenate([q, r, jnp.zeros((1, SIZE, SIZE, 3))])))
    eq, er, eb = e[:2], e[2:4], e[4]
    expected = jnp.sum((eq - eb) * (er - eb), axis=-1)
    np.testing.assert_allclose(result.correspondence.sum(axis=(1, 2, 3, 4)), expected, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(result.similarity, cosine(eq, er), atol=1e-6)
    assert result.query_map.shape == (2, SIZE, SIZE)


def test_bad_arguments_are_refused():
    embed = lambda x: x.reshape(x.shape[0], -1)[:, :4]  # noqa: E731
    with pytest.raises(ValueError, match="cosine or dot"):
        integrated_cross_jacobian(embed, _images(0), _images(1), similarity=lambda a, b: a.sum(-1))
    with pytest.raises(ValueError, match="query's shape"):
        integrated_cross_jacobian(embed, _images(0, 2), _images(1, 3))
    with pytest.raises(ValueError, match="num_steps"):
        integrated_cross_jacobian(embed, _images(0), _images(1), num_steps=0)
