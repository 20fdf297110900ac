import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simexplain_jax as sx


def test_cosine_matches_formula_and_broadcasts():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 1, 5)), rng.normal(size=(1, 3, 5))
    expected = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    np.testing.assert_allclose(sx.similarity.cosine(a, b), expected, rtol=1e-5)
    assert sx.similarity.cosine(a, b).shape == (4, 3)


def test_zero_vectors_give_zero_and_finite_gradients():
    z, v = jnp.zeros(4), jnp.array([1.0, 2.0, 0.0, -1.0])
    assert float(sx.similarity.cosine(z, v)) == 0.0
    assert float(sx.similarity.cosine(z, z)) == 0.0
    grad = jax.grad(lambda x: sx.similarity.cosine(x, v))(z)
    assert np.all(np.isfinite(grad))
    assert np.all(np.isfinite(sx.similarity.pairwise_cosine(jnp.zeros((2, 4)), jnp.zeros((3, 4)))))


def test_pairwise_equals_broadcast_cosine():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 7)), rng.normal(size=(3, 7))
    np.testing.assert_allclose(sx.similarity.pairwise_cosine(a, b), sx.similarity.cosine(a[:, None], b[None]), rtol=1e-5)
    np.testing.assert_allclose(
        sx.similarity.pairwise(sx.similarity.dot, a, b), a @ b.T, rtol=1e-5)


def test_dimension_mismatch_raises():
    with pytest.raises(ValueError, match="D=3"):
        sx.similarity.cosine(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        sx.similarity.pairwise_cosine(np.ones(3), np.ones((2, 3)))


def test_the_core_library_does_not_import_the_dataset_stack():
    """Saliency and metrics must run where tensorflow-datasets/grain are absent (e.g. an accelerator image)."""
    import subprocess
    import sys

    code = ("import sys, simexplain_jax as sx, simexplain_jax.saliency, simexplain_jax.metrics, simexplain_jax.models; "
            "bad = [m for m in ('tensorflow_datasets', 'grain') if m in sys.modules]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
