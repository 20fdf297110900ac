"""Every method's maps equal the ones recorded before the options refactor (tests/data/golden_maps.npz).

The stored arrays were computed by the code as it stood before the per-method options objects
replaced the keyword defaults; the refactor changed how options travel, not what is computed, so
each map must match to float rounding (most bit for bit). Regenerate only for a deliberate change
of a method's numbers: ``SIMEXPLAIN_WRITE_GOLDEN=1 pytest tests/test_golden_maps.py``. The RISE
entries name ``sampler="iid"``, the default when they were recorded (the default is now
``"orthogonal"``, whose maps are recorded under ``rise_orthogonal``).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simexplain_jax as sx

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden_maps.npz")
SIZE = 16


def _model():
    """A small non-linear embedding (plain function): tanh of a random projection, then a linear map."""
    k1, k2 = jax.random.split(jax.random.key(7))
    w1 = jax.random.normal(k1, (SIZE * SIZE * 3, 24)) / np.sqrt(SIZE * SIZE * 3)
    w2 = jax.random.normal(k2, (24, 6)) / np.sqrt(24) + 0.1

    def embed(images):
        return jnp.tanh(images.reshape(images.shape[0], -1) @ w1 + 0.2) @ w2

    return embed


def _images(count, seed):
    """Smooth random images with blob structure (so SLIC has superpixels to find)."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(count, 4, 4, 3)).astype(np.float32)
    return np.asarray(jax.image.resize(coarse, (count, SIZE, SIZE, 3), "bilinear"))


def compute() -> dict:
    embed = _model()
    queries, references = _images(3, 0), _images(3, 1)
    ref_emb = np.asarray(embed(jnp.asarray(references)))
    key = jax.random.key(3)
    q, refs_e, refs_i = queries[0], ref_emb[:2], references[:2]
    window = dict(window=6, stride=2, padding=2)
    out = {}
    s = sx.saliency
    out["rise"] = s.rise(embed, q, refs_e, key=key, num_masks=96, grid_size=4, batch_size=32,
                         sampler="iid").maps
    out["rise_expected"] = s.rise(embed, q, refs_e[0], key=key, num_masks=96, grid_size=4, batch_size=32,
                                  normalize="expected", p=0.4, sampler="iid").maps
    for sampler in ("antithetic", "stratified", "orthogonal"):
        out[f"rise_{sampler}"] = s.rise(embed, q, refs_e, key=key, num_masks=128, grid_size=4, batch_size=64,
                                        sampler=sampler).maps
    tol = s.rise(embed, q, refs_e, key=key, num_masks=512, grid_size=4, batch_size=32, tolerance=0.05,
                 sampler="iid")
    out["rise_tolerance"], out["rise_tolerance_passes"] = tol.maps, tol.passes
    out["rise_variable"] = s.rise_variable(embed, q, refs_i, key=key, num_masks=64, num_reference_masks=4,
                                           grid_size=4, batch_size=32, sampler="iid").maps
    out["sliding_window"] = s.sliding_window(embed, q, refs_e, **window, batch_size=16).maps
    out["sliding_window_variable"] = s.sliding_window_variable(embed, q, refs_i, **window, reference_window=8,
                                                               reference_stride=8, batch_size=16).maps
    out["lime"] = s.lime(embed, q, refs_e, key=key, num_samples=64, num_segments=8, batch_size=32).maps
    out["lime_variable"] = s.lime_variable(embed, q, refs_i, key=key, num_samples=64, num_segments=8,
                                           num_reference_masks=3, grid_size=4, batch_size=32).maps
    out["perturbation"] = s.perturbation(embed, q, refs_e, key=key, grid=4, num_steps=12, blur_size=5).maps
    out["perturbation_variable"] = s.perturbation_variable(embed, q, refs_i[0], key=key, grid=4, num_steps=12,
                                                           blur_size=5).maps
    out["perturbation_batch"] = s.perturbation_batch(embed, queries[:2], ref_emb[:2], key=key, grid=4, num_steps=8,
                                                     blur_size=5)
    out["gradient"] = s.gradient(embed, q, refs_e).maps
    out["integrated_gradients"] = s.integrated_gradients(embed, q, refs_e, num_steps=16, batch_size=8).maps
    out["random"] = s.random(embed, q, refs_e, key=key).maps
    pairs = np.array([[0, 0], [0, 1], [1, 2], [2, 0]])
    small = {"rise": dict(num_masks=64, grid_size=4, batch_size=32, sampler="iid"),
             "rise_variable": dict(num_masks=64, num_reference_masks=3, grid_size=4, batch_size=32, sampler="iid"),
             "sliding_window": dict(window, batch_size=16),
             "lime": dict(num_samples=64, num_segments=8, batch_size=32),
             "perturbation": dict(grid=4, num_steps=8, blur_size=5),
             "integrated_gradients": dict(num_steps=8, batch_size=8),
             "random": {}}
    for method, config in small.items():
        out[f"explain_pairs_{method}"] = s.explain_pairs(method, embed, queries, references, key=key, pairs=pairs,
                                                         config=config, segment_threads=0)
    curves = sx.metrics.insertion_deletion_batch(embed, queries[:2], ref_emb[:2], out["explain_pairs_rise"][:2],
                                                 background=0.0, num_steps=11, batch_size=8)
    out["insertion_auc"], out["deletion_auc"] = curves.insertion_auc, curves.deletion_auc
    return {name: np.asarray(value) for name, value in out.items()}


@pytest.fixture(scope="module")
def computed():
    return compute()


def test_write_or_check_golden(computed):
    if os.environ.get("SIMEXPLAIN_WRITE_GOLDEN"):
        os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
        np.savez_compressed(GOLDEN, **computed)
    golden = np.load(GOLDEN)
    assert sorted(golden.files) == sorted(computed)
    for name in golden.files:
        assert computed[name].shape == golden[name].shape, name
        np.testing.assert_allclose(computed[name], golden[name], rtol=2e-5, atol=2e-6, err_msg=name)


def test_golden_maps_are_informative():
    """The stored maps are not degenerate: each varies over its pixels (a constant map would pass anything)."""
    golden = np.load(GOLDEN)
    for name in golden.files:
        if golden[name].ndim >= 2:
            assert np.ptp(golden[name]) > 0, name
