"""The exact pooled decomposition: cell-pair contributions sum to the model's similarity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from simexplain_jax.models import EmbeddingNet, ResNet18, SmallCNN, TypeAwareEmbedding, condition_embed_fn, embed_fn
from simexplain_jax.saliency import PooledModel, pooled_pair
from simexplain_jax.similarity import cosine, dot

SIZE = 32


def _images(count, seed):
    return np.random.default_rng(seed).normal(size=(count, SIZE, SIZE, 3)).astype(np.float32)


def _init(model, seed=0):
    return model.init(jax.random.key(seed), jnp.zeros((1, SIZE, SIZE, 3)))


@pytest.mark.parametrize("backbone", [SmallCNN(features=(4, 8, 8)), ResNet18(width=4, stages=2)],
                         ids=["small_cnn", "resnet18"])
def test_contributions_sum_to_the_similarity(backbone):
    model = EmbeddingNet(backbone, dim=16)
    variables = _init(model)
    queries, references = _images(3, 0), _images(3, 1)
    result = pooled_pair(model, variables, queries, references)
    f = embed_fn(model, variables)
    expected = cosine(f(queries), f(references))
    assert result.correspondence.shape[0] == 3 and result.correspondence.ndim == 5
    np.testing.assert_allclose(result.correspondence.sum(axis=(1, 2, 3, 4)), expected, atol=1e-5)
    np.testing.assert_allclose(result.similarity, expected, atol=1e-5)
    assert result.query_map.shape == (3, SIZE, SIZE) and result.reference_map.shape == (3, SIZE, SIZE)
    assert result.passes == 2


def test_unnormalised_model_with_dot_and_cosine():
    model = EmbeddingNet(SmallCNN(features=(4, 8, 8)), dim=8, normalize=False)
    variables = _init(model)
    q, r = _images(1, 2)[0], _images(1, 3)[0]
    f = embed_fn(model, variables)
    eq, er = f(q[None])[0], f(r[None])[0]
    np.testing.assert_allclose(pooled_pair(model, variables, q, r, similarity=dot).correspondence.sum(),
                               jnp.dot(eq, er), rtol=1e-5)
    np.testing.assert_allclose(pooled_pair(model, variables, q, r).correspondence.sum(), cosine(eq, er), atol=1e-5)


def test_type_aware_condition():
    model = TypeAwareEmbedding(SmallCNN(features=(4, 8, 8)), num_conditions=3, dim=8)
    variables = _init(model)
    q, r = _images(2, 4), _images(2, 5)
    for c in range(3):
        f = condition_embed_fn(model, variables, c)
        result = pooled_pair(model, variables, q, r, condition=c)
        np.testing.assert_allclose(result.similarity, cosine(f(q), f(r)), atol=1e-5)
        np.testing.assert_allclose(result.correspondence.sum(axis=(1, 2, 3, 4)), cosine(f(q), f(r)), atol=1e-5)


def test_user_model_against_a_plain_loop():
    """A user's PooledModel: C_ij computed here cell by cell, as the definition reads."""
    rng = np.random.default_rng(0)
    kernel = jnp.asarray(rng.normal(size=(4, 4, 3, 5)).astype(np.float32))
    weight = rng.normal(size=(5, 6)).astype(np.float32)
    bias = rng.normal(size=(6,)).astype(np.float32)
    scale = np.abs(rng.normal(size=(6,))).astype(np.float32)

    def features(kernel, images):  # a strided convolution: 8 x 8 cells of 5 channels
        return jax.lax.conv_general_dilated(images, kernel, (4, 4), "VALID",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    pooled = PooledModel(Partial(features, kernel), jnp.asarray(weight), jnp.asarray(bias), jnp.asarray(scale))
    q, r = _images(1, 6)[0], _images(1, 7)[0]
    result = pooled_pair(pooled, None, q, r)
    fq, fr = np.asarray(features(kernel, q[None]))[0], np.asarray(features(kernel, r[None]))[0]
    vq, vr = (fq @ weight + bias) * scale, (fr @ weight + bias) * scale
    uq, ur = vq.mean(axis=(0, 1)), vr.mean(axis=(0, 1))
    expected = np.zeros((8, 8, 8, 8))
    for a in range(8):
        for b in range(8):
            for c in range(8):
                for d in range(8):
                    expected[a, b, c, d] = vq[a, b] @ vr[c, d] / (64 * 64 * np.linalg.norm(uq) * np.linalg.norm(ur))
    np.testing.assert_allclose(result.correspondence, expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(expected.sum(), uq @ ur / np.linalg.norm(uq) / np.linalg.norm(ur), rtol=1e-6)


def test_matching_objects_get_the_strongest_cell_pair():
    """Analytic: features are the image's 8 x 8 cell means, bias 0; an object in one cell of each image
    on an empty background is the only cell pair with a contribution."""
    def features(images):
        b, h, w, c = images.shape
        return images.reshape(b, 8, h // 8, 8, w // 8, c).mean(axis=(2, 4))

    pooled = PooledModel(Partial(features), jnp.eye(3), jnp.zeros(3))
    q, r = np.zeros((SIZE, SIZE, 3), np.float32), np.zeros((SIZE, SIZE, 3), np.float32)
    q[8:12, 20:24] = [1.0, 0.5, 0.0]  # cell (2, 5)
    r[24:28, 4:8] = [1.0, 0.4, 0.1]  # cell (6, 1)
    result = pooled_pair(pooled, None, q, r)
    corr = np.asarray(result.correspondence)
    assert np.unravel_index(np.argmax(corr), corr.shape) == (2, 5, 6, 1)
    assert np.count_nonzero(corr) == 1
    np.testing.assert_allclose(corr.sum(), cosine(jnp.asarray([1.0, 0.5, 0.0]), jnp.asarray([1.0, 0.4, 0.1])),
                               rtol=1e-5)
    query_peak = np.unravel_index(np.argmax(result.query_map), (SIZE, SIZE))
    assert 8 <= query_peak[0] < 12 and 20 <= query_peak[1] < 24


def test_models_that_do_not_fit_are_refused():
    model = SmallCNN(features=(4, 8, 8))
    with pytest.raises(TypeError, match="affine head on the mean of a feature map"):
        pooled_pair(model, _init(model), _images(1, 0)[0], _images(1, 1)[0])
    net = EmbeddingNet(SmallCNN(features=(4, 8, 8)), dim=8)
    with pytest.raises(ValueError, match="cosine or dot"):
        pooled_pair(net, _init(net), _images(1, 0)[0], _images(1, 1)[0], similarity=lambda a, b: -jnp.sum(a * b, -1))
    typed = TypeAwareEmbedding(SmallCNN(features=(4, 8, 8)), num_conditions=2, dim=8)
    with pytest.raises(ValueError, match="condition="):
        pooled_pair(typed, _init(typed), _images(1, 0)[0], _images(1, 1)[0])
    with pytest.raises(ValueError, match="one image per query"):
        pooled_pair(net, _init(net), _images(2, 0), _images(3, 1))
