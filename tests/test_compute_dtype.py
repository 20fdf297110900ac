"""The ``compute_dtype`` option: the embedding forward in bfloat16, scores and sums in float32.

Agreement is measured on a small random CNN (``SmallCNN`` with batch norm, 24 px, random weights
and random batch statistics); the trained-model check is in test_experiments.py.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import simexplain_jax as sx
from simexplain_jax import engine
from simexplain_jax.models import EmbeddingNet, SmallCNN, embed_fn
from simexplain_jax.saliency import _rise

SIZE = 24
MIN_CORRELATION = 0.99  # the documented bound: bfloat16 maps against float32 maps, per map
MAX_AUC_CHANGE = 0.03  # insertion / deletion AUC (in [0, 1]) moved by bfloat16


def _random_batch_stats(variables, seed=1):
    """Batch statistics away from (0, 1), so that inference-mode batch norm is not the identity."""
    stats = variables["batch_stats"]
    leaves, tree = jax.tree.flatten(stats)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [0.3 * jax.random.normal(k, x.shape) if i % 2 == 0 else 0.5 + jax.random.uniform(k, x.shape)
              for i, (k, x) in enumerate(zip(keys, leaves))]  # flax orders mean before var
    return {**variables, "batch_stats": jax.tree.unflatten(tree, leaves)}


@pytest.fixture(scope="module")
def cnn():
    net = EmbeddingNet(SmallCNN((16, 32)), 16)
    variables = _random_batch_stats(jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))))
    rng = np.random.default_rng(0)
    # smooth images (blocks of 4 px) so that SLIC finds several superpixels
    blocks = rng.normal(size=(4, SIZE // 4, SIZE // 4, 3)).astype(np.float32)
    images = np.repeat(np.repeat(blocks, 4, axis=1), 4, axis=2)
    return net, variables, embed_fn(net, variables), images


def test_in_compute_dtype_is_the_bfloat16_forward_written_here(cnn):
    net, variables, f, images = cnn
    g = engine.in_compute_dtype(f, "bfloat16")
    cast = jax.tree.map(lambda x: x.astype(jnp.bfloat16), variables)
    expected = jax.jit(lambda v, x: net.apply(v, x.astype(jnp.bfloat16), train=False).astype(jnp.float32))(
        cast, images)
    out = jax.jit(lambda fn, x: fn(x))(g, images)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(g.args))  # parameters cast once, held by g
    # float32 is the identity; applying it twice is applying it once; integer leaves are kept
    assert engine.in_compute_dtype(f, "float32") is f
    assert engine.in_compute_dtype(g, "bfloat16") is g
    with_index = engine.in_compute_dtype(Partial(lambda w, i, x: x.reshape(len(x), -1)[:, :4] * w[i],
                                                 jnp.ones(3), jnp.int32(1)), "bfloat16")
    assert with_index.args[1].dtype == jnp.int32 and with_index(images).dtype == jnp.float32


def test_bfloat16_rise_convolves_in_bfloat16_and_accumulates_in_float32(cnn):
    _, _, f, images = cnn
    query = jnp.asarray(images[0])
    refs = jnp.ones((2, 16)) / 4.0
    options = _rise.Rise(num_masks=8, grid_size=4, batch_size=4, compute_dtype="bfloat16")
    lowered = _rise._rise_jit.lower(f, query, refs, jax.random.key(0), options)
    convolutions = [line for line in lowered.as_text().splitlines() if "convolution" in line]
    assert convolutions and all(re.search(r"x[0-9]+xbf16>\)? ?->.*xbf16>", line) for line in convolutions)
    assert lowered.out_info.maps.dtype == jnp.float32 and lowered.out_info.maps.shape == (2, SIZE, SIZE)


def _correlation(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(np.corrcoef(a, b)[0, 1])


METHODS = {
    "rise": dict(num_masks=400, grid_size=4),
    "sliding_window": dict(window=8, stride=4, padding=2),
    "lime": dict(num_samples=200, num_segments=12),
    "gradient": {},  # the backward pass in bfloat16 too (as integrated gradients and the mask method)
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bfloat16_maps_agree_with_float32(cnn, method):
    _, _, f, images = cnn
    pairs = np.array([[0, 1], [2, 3]])
    key = jax.random.key(0)
    full = sx.saliency.explain_pairs(method, f, images, images, key=key, pairs=pairs, config=METHODS[method])
    half = sx.saliency.explain_pairs(method, f, images, images, key=key, pairs=pairs,
                                     config={**METHODS[method], "compute_dtype": "bfloat16"})
    assert half.dtype == np.float32 and np.all(np.isfinite(half))
    assert not np.array_equal(full, half)  # the option changes the computation
    for a, b in zip(full, half):
        assert _correlation(a, b) >= MIN_CORRELATION, method


def test_insertion_deletion_in_bfloat16_moves_aucs_little(cnn):
    _, _, f, images = cnn
    g = engine.in_compute_dtype(f, "bfloat16")
    rng = np.random.default_rng(1)
    saliency = rng.random((3, SIZE, SIZE)).astype(np.float32)
    options = dict(background=0.0, num_steps=21, batch_size=16)
    full = sx.metrics.insertion_deletion_batch(f, images[:3], engine.apply_in_chunks(f, images[1:4]), saliency,
                                               **options)
    half = sx.metrics.insertion_deletion_batch(f, images[:3], engine.apply_in_chunks(g, images[1:4]), saliency,
                                               compute_dtype="bfloat16", **options)
    assert np.max(np.abs(half.insertion_auc - full.insertion_auc)) <= MAX_AUC_CHANGE
    assert np.max(np.abs(half.deletion_auc - full.deletion_auc)) <= MAX_AUC_CHANGE
    assert not np.array_equal(half.insertion_curve, full.insertion_curve)


@pytest.mark.parametrize("bad", ["float16", "int8", None, "bf16"])
def test_compute_dtype_is_checked(cnn, bad):
    _, _, f, images = cnn
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        sx.saliency.rise(f, images[0], np.ones(16), key=jax.random.key(0), num_masks=4, compute_dtype=bad)
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        sx.saliency.explain_pairs("random", f, images, images, key=jax.random.key(0), pairs=[[0, 1]],
                                  config={"compute_dtype": bad})
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        sx.metrics.insertion_deletion(f, images[0], np.ones(16), np.ones((SIZE, SIZE)), background=0.0,
                                      compute_dtype=bad)
