"""LIME, the meaningful-perturbation mask, gradients, pointing."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simexplain_jax as sx
from conftest import SALIENCY_CONFIGS
from simexplain_jax.saliency._lime import weighted_ridge
from simexplain_jax.saliency._perturbation import median_blur


def grid_segments(size=16, cells=4):
    rows = np.arange(size) // (size // cells)
    return (rows[:, None] * cells + rows[None, :]).astype(np.int32)


def superpixel_linear_model(segments, weights):
    """similarity(f(q'), r) with dot similarity = sum_s w_s * (fraction of superpixel s kept)."""
    onehot = np.eye(weights.size)[segments]  # [H, W, S]
    per_pixel = jnp.asarray((onehot / onehot.sum((0, 1))) @ weights, jnp.float32)  # each superpixel sums to w_s

    def embed(images):
        return jnp.sum(images[..., 0] * per_pixel, axis=(1, 2))[:, None]

    return embed


def test_lime_recovers_linear_superpixel_weights():
    segments = grid_segments()
    weights = np.random.default_rng(0).normal(size=16)
    embed = superpixel_linear_model(segments, weights)
    query = jnp.ones((16, 16, 3))
    maps = sx.saliency.lime(embed, query, jnp.ones(1), key=jax.random.key(0), segments=segments, num_samples=300,
                            ridge_alpha=1e-6, similarity=sx.similarity.dot).maps
    np.testing.assert_allclose(np.asarray(maps), weights[segments], atol=1e-3)


def test_lime_k_references_equal_k_separate_solves(linear_model):
    embed, _ = linear_model
    query = jax.random.normal(jax.random.key(0), (16, 16, 3))
    refs = jax.random.normal(jax.random.key(1), (3, 8))
    segments = grid_segments()
    together = sx.saliency.lime(embed, query, refs, key=jax.random.key(2), segments=segments, num_samples=200).maps
    for k in range(3):
        alone = sx.saliency.lime(embed, query, refs[k], key=jax.random.key(2), segments=segments, num_samples=200).maps
        np.testing.assert_allclose(together[k], alone, rtol=1e-4, atol=1e-6)


def test_weighted_ridge_equals_the_normal_equations():
    rng = np.random.default_rng(3)
    z = rng.integers(0, 2, (50, 6)).astype(np.float64)
    y = rng.normal(size=(50, 2))
    w = rng.uniform(0.1, 1, 50)
    design = np.hstack([np.ones((50, 1)), z])
    penalty = np.diag([0.0] + [0.5] * 6)
    expected = np.linalg.solve(design.T @ (w[:, None] * design) + penalty, design.T @ (w[:, None] * y))[1:].T
    with jax.default_matmul_precision("highest"):
        got = weighted_ridge(jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.float32), jnp.asarray(w, jnp.float32), 0.5)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_lime_explicit_samples_recover_exact_weights():
    segments = grid_segments(16, 2)  # 4 superpixels
    weights = np.array([0.5, -1.0, 2.0, 0.25])
    embed = superpixel_linear_model(segments, weights)
    samples = np.array([[(i >> b) & 1 for b in range(4)] for i in range(16)], np.float32)[::-1]  # every on/off state
    maps = sx.saliency.lime(embed, jnp.ones((16, 16, 3)), jnp.ones(1), samples=samples, segments=segments,
                            ridge_alpha=1e-9, similarity=sx.similarity.dot).maps
    np.testing.assert_allclose(np.asarray(maps), weights[segments], atol=1e-4)
    with pytest.raises(ValueError, match="exactly one of key"):
        sx.saliency.lime(embed, jnp.ones((16, 16, 3)), jnp.ones(1), samples=samples, segments=segments,
                         key=jax.random.key(0))
    with pytest.raises(ValueError, match="S = 4"):
        sx.saliency.lime(embed, jnp.ones((16, 16, 3)), jnp.ones(1), samples=samples[:, :3], segments=segments)


def test_segment_capacity_is_the_next_power_of_two_at_least_the_target():
    capacity = sx.saliency._lime.segment_capacity
    assert [capacity(3, 8), capacity(8, 8), capacity(9, 8), capacity(47, 50), capacity(64, 50), capacity(65, 50),
            capacity(1, 1)] == [8, 8, 16, 64, 64, 128, 1]


def test_lime_superpixel_counts_share_one_program_and_the_extra_slots_change_nothing(saliency_problem):
    """Queries with 4, 9 and 16 superpixels (SLIC's target 16) run one compiled program, and each
    map equals the map of a program with twice the slots: the slots past S are never on."""
    embed, images, _ = saliency_problem
    query, refs = images[0], embed(images[1:3])
    options = sx.saliency.Lime(num_samples=48, num_segments=16, ridge_alpha=0.0)  # unit diagonal on the extra slots
    lime_jit = sx.saliency._lime._lime_jit
    before = lime_jit._cache_size()
    for cells in (2, 3, 4):
        segments = grid_segments(16, cells)
        maps = sx.saliency.lime(embed, query, refs, key=jax.random.key(2), segments=segments, options=options).maps
        wider = lime_jit(embed, query, refs, jax.random.key(2), options, jnp.asarray(segments), capacity=32).maps
        np.testing.assert_allclose(maps, wider, rtol=1e-6, atol=1e-7)
        assert np.all(np.isfinite(maps)) and np.ptp(np.asarray(maps)) > 0
    assert lime_jit._cache_size() == before + 2  # capacity 16 for the three counts, and the wider program
    states = jax.vmap(sx.saliency._lime._samples(jax.random.key(5), jnp.arange(16) < 9))(jnp.arange(6))
    assert np.all(np.asarray(states)[0] == (np.arange(16) < 9)) and not np.asarray(states)[:, 9:].any()


def test_lime_variable_is_the_mean_over_masked_references(linear_model):
    embed, _ = linear_model
    query = jax.random.normal(jax.random.key(0), (16, 16, 3))
    reference = jax.random.normal(jax.random.key(1), (16, 16, 3))
    segments, key = grid_segments(), jax.random.key(3)
    variable = sx.saliency.lime_variable(embed, query, reference, key=key, num_samples=64, segments=segments,
                                         num_reference_masks=4, grid_size=2, p=0.5).maps
    ref_masks = sx.masks.rise_masks((16, 16), key=jax.random.fold_in(key, 1), num_masks=4, grid_size=2, p=0.5)
    masked = embed(reference[None] * ref_masks[..., None])  # the 4 masked references, embedded
    expected = sx.saliency.lime(embed, query, masked, key=jax.random.fold_in(key, 0), num_samples=64,
                                segments=segments).maps.mean(0)
    np.testing.assert_allclose(variable, expected, rtol=1e-4, atol=1e-6)


def test_lime_default_superpixels_follow_the_image(linear_model):
    embed, _ = linear_model
    query = np.zeros((16, 16, 3), np.float32)
    query[:, 8:] = 2.0  # two flat halves: SLIC never mixes them
    maps = np.asarray(sx.saliency.lime(embed, query, embed(query[None])[0], key=jax.random.key(0), num_samples=64,
                                       num_segments=4).maps)
    assert maps.shape == (16, 16) and np.all(np.isfinite(maps))
    segments = sx.saliency.superpixels(sx.saliency.denormalize(query), 4)
    assert not set(np.unique(segments[:, :8])) & set(np.unique(segments[:, 8:]))
    for label in np.unique(segments):  # each pixel carries its superpixel's coefficient
        assert np.ptp(maps[segments == label]) == 0.0
    with pytest.raises(ValueError, match="num_samples"):
        sx.saliency.lime(embed, query, jnp.ones(8), key=jax.random.key(0), num_samples=1)
    with pytest.raises(ValueError, match="segments"):
        sx.saliency.lime(embed, query, jnp.ones(8), key=jax.random.key(0), segments=np.zeros((4, 4), np.int32))


class TextureModel:
    """Texture inside a box raises the similarity, texture outside lowers it:
    e = [12 * (mean_box (x - .5)^2 - mean_out (x - .5)^2) + 0.5, 0.1] against r = [1, 0]. The query is
    uniform random texture (variance 1/12) everywhere, so median-blurring the box flips the
    similarity to negative while blurring anything else raises it: a deletion mask must delete
    the box and keep the rest."""

    def __init__(self, size=32, box=(8, 8, 24, 24)):
        self.region = np.zeros((size, size), bool)
        self.region[box[0]:box[2], box[1]:box[3]] = True
        self._inside = jnp.asarray(self.region / self.region.sum(), jnp.float32)
        self._outside = jnp.asarray(~self.region / (~self.region).sum(), jnp.float32)
        self.query = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (size, size, 3)), jnp.float32)
        self.reference = jnp.array([1.0, 0.0])

    def __call__(self, images):
        energy = (images[..., 0] - 0.5) ** 2
        inside, outside = jnp.sum(energy * self._inside, axis=(1, 2)), jnp.sum(energy * self._outside, axis=(1, 2))
        return jnp.stack([12 * (inside - outside) + 0.5, jnp.full_like(inside, 0.1)], axis=-1)


def test_perturbation_mask_finds_the_region():
    model = TextureModel()
    maps = sx.saliency.perturbation(model, model.query, model.reference, key=jax.random.key(0), num_steps=150).maps
    positive = np.maximum(np.asarray(maps), 0)
    assert positive[model.region].sum() >= 0.75 * positive.sum()
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0


def test_perturbation_vmapped_pairs_equal_one_at_a_time(linear_model):
    embed, _ = linear_model
    queries = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    refs = jax.random.normal(jax.random.key(1), (3, 8))
    keys = jax.random.split(jax.random.key(5), 3)
    together = sx.saliency.perturbation_batch(embed, queries, refs, key=keys, num_steps=30)
    for i in range(3):
        alone = sx.saliency.perturbation_batch(embed, queries[i:i + 1], refs[i:i + 1], key=keys[i:i + 1],
                                               num_steps=30)
        np.testing.assert_allclose(together[i], alone[0], atol=1e-5)
    folded = sx.saliency.perturbation_batch(embed, queries, refs, key=jax.random.key(5), num_steps=30)
    single = sx.saliency.perturbation(embed, queries[1], refs[1], key=jax.random.fold_in(jax.random.key(5), 1),
                                      num_steps=30).maps
    np.testing.assert_allclose(folded[1], single, atol=1e-5)
    variable = sx.saliency.perturbation_variable_batch(embed, queries, queries[::-1], key=jax.random.key(5),
                                                       num_steps=10)
    for i in range(3):  # pair i with one key uses fold_in(key, i), as the single-pair call with that key
        alone = sx.saliency.perturbation_variable(embed, queries[i], queries[2 - i],
                                                  key=jax.random.fold_in(jax.random.key(5), i), num_steps=10).maps
        np.testing.assert_allclose(variable[i], alone, atol=1e-5)
    assert float(variable.min()) >= 0.0 and float(variable.max()) <= 1.0
    with pytest.raises(ValueError, match="same shape"):
        sx.saliency.perturbation_variable_batch(embed, queries, queries[:2], key=jax.random.key(0))
    with pytest.raises(ValueError, match="keys"):
        sx.saliency.perturbation_batch(embed, queries, refs, key=keys[:2])


def test_perturbation_blur_larger_than_the_image_is_refused(linear_model):
    embed, _ = linear_model
    with pytest.raises(ValueError, match="blur_size"):
        sx.saliency.perturbation(embed, jnp.ones((16, 16, 3)), jnp.ones(8), key=jax.random.key(0), blur_size=101)


def test_median_blur_equals_scipy():
    from scipy import ndimage

    image = np.random.default_rng(0).normal(size=(20, 24, 3)).astype(np.float32)
    expected = np.stack([ndimage.median_filter(image[..., c], size=11, mode="nearest") for c in range(3)], -1)
    np.testing.assert_allclose(median_blur(jnp.asarray(image)), expected, atol=1e-6)


def test_integrated_gradients_completeness_and_gradient_x_input():
    size = 16
    w1 = jax.random.normal(jax.random.key(0), (size * size * 3, 16)) / 30
    w2 = jax.random.normal(jax.random.key(1), (16, 8))

    bias = jax.random.normal(jax.random.key(5), (16,))

    def embed(images):  # a smooth non-linear model whose embedding is not 0 at the baseline
        return jnp.tanh(images.reshape(images.shape[0], -1) @ w1 + bias) @ w2

    query = jax.random.normal(jax.random.key(2), (size, size, 3))
    reference = embed(jax.random.normal(jax.random.key(3), (1, size, size, 3)))[0]
    attributions = sx.saliency.integrated_gradients(embed, query, reference, num_steps=64).maps
    difference = sx.similarity.cosine(embed(query[None])[0], reference) - sx.similarity.cosine(
        embed(jnp.zeros((1, size, size, 3)))[0], reference)
    assert abs(float(attributions.sum()) - float(difference)) <= 0.01 * abs(float(difference))
    # gradient x input of a linear score is exactly the per-pixel contribution
    w = jax.random.normal(jax.random.key(4), (size * size * 3,))
    linear = lambda images: (images.reshape(images.shape[0], -1) @ w)[:, None]  # noqa: E731
    got = sx.saliency.gradient(linear, query, jnp.ones(1), similarity=sx.similarity.dot).maps
    np.testing.assert_allclose(got, (query * w.reshape(size, size, 3)).sum(-1), rtol=1e-5, atol=1e-5)


def test_pointing():
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    saliency = np.zeros((8, 8))
    saliency[3, 3] = 2.0
    saliency[6, 6] = 1.0
    result = sx.metrics.pointing(saliency, mask, baseline="zero")
    assert result.hit and result.mass_on_key == pytest.approx(2 / 3)
    offset = sx.metrics.pointing(saliency + 100.0, mask)  # the median baseline ignores a constant offset
    assert offset.hit and offset.mass_on_key == pytest.approx(2 / 3)
    assert not sx.metrics.pointing(np.ones((8, 8)), mask).hit  # a flat map does not point
    superpixel = np.zeros((8, 8))
    superpixel[2:4, 1:4] = 1.0  # a maximal region mostly (4 of 6 pixels) on the key object
    assert sx.metrics.pointing(superpixel, mask).hit
    superpixel[4:8, 1:4] = 1.0
    assert not sx.metrics.pointing(superpixel, mask).hit
    with pytest.raises(ValueError, match="key_mask"):
        sx.metrics.pointing(saliency, np.zeros((8, 8), bool))


FIXED = ("rise", "sliding_window", "lime", "perturbation", "gradient", "integrated_gradients", "random")
VARIABLE = ("rise_variable", "sliding_window_variable", "lime_variable", "perturbation_variable")
DETERMINISTIC = ("sliding_window", "sliding_window_variable", "gradient", "integrated_gradients")


@pytest.mark.parametrize("name", FIXED + VARIABLE)
def test_every_method_has_one_reference_convention_and_takes_key(saliency_problem, name):
    """One reference gives [H, W]; a stack of K gives [K, H, W] whose rows are the single maps;
    ``key`` is a keyword of every method and changes nothing for the deterministic ones."""
    embed, _, _ = saliency_problem
    method, options = getattr(sx.saliency, name), SALIENCY_CONFIGS[name]
    rng = np.random.default_rng(0)
    query = rng.normal(size=(16, 16, 3)).astype(np.float32)
    images = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
    refs = images if name in VARIABLE else np.asarray(embed(images))
    key = jax.random.key(1)
    stacked = np.asarray(method(embed, query, refs, key=key, **options).maps)
    assert stacked.shape == (2, 16, 16)
    for k in range(2):
        single = np.asarray(method(embed, query, refs[k], key=key, **options).maps)
        assert single.shape == (16, 16)
        if name != "random":  # random draws map k from fold_in(key, k)
            np.testing.assert_allclose(stacked[k], single, rtol=1e-4, atol=1e-5 * float(np.abs(single).max()) + 1e-7)
    if name in DETERMINISTIC:
        np.testing.assert_array_equal(method(embed, query, refs[0], key=jax.random.key(9), **options).maps,
                                      method(embed, query, refs[0], **options).maps)
    elif name != "rise":  # rise takes masks= instead of a key, tested in test_rise.py
        with pytest.raises(ValueError, match="key"):
            method(embed, query, refs[0], key=None, **options)


def test_saliency_modules_are_not_shadowed_by_functions():
    import importlib
    import types

    import simexplain_jax.saliency as saliency

    for name in dir(saliency):
        value = getattr(saliency, name)
        if callable(value) and not isinstance(value, type):
            try:
                module = importlib.import_module(f"simexplain_jax.saliency.{name}")
            except ModuleNotFoundError:
                continue
            raise AssertionError(f"saliency.{name} is a function that hides the module {module.__name__}")
    for name in ("pairs", "cache", "distributed", "_rise", "_lime"):
        assert isinstance(importlib.import_module(f"simexplain_jax.saliency.{name}"), types.ModuleType)


def test_float_options_of_lime_and_the_mask_are_traced(linear_model):
    """LIME's kernel width and ridge penalty and the mask method's learning rate and weights are
    traced leaves of their options: new values change the maps and compile nothing."""
    embed = linear_model[0]
    rng = np.random.default_rng(5)
    query = rng.normal(size=(16, 16, 3)).astype(np.float32)
    ref = np.asarray(embed(rng.normal(size=(1, 16, 16, 3)).astype(np.float32)))[0]
    key = jax.random.key(0)
    cases = [("_lime", "_lime_jit", sx.saliency.lime, sx.saliency.Lime(num_samples=16, num_segments=4),
              [dict(kernel_width=0.5, ridge_alpha=0.1), dict(kernel_width=1.0, ridge_alpha=3.0)],
              dict(segments=grid_segments())),
             ("_perturbation", "_perturbation_jit", sx.saliency.perturbation,
              sx.saliency.Perturbation(grid=4, num_steps=3, blur_size=5),
              [dict(learning_rate=0.3, l1_weight=0.5), dict(tv_weight=0.9, noise_std=0.05)], {})]
    for module, jitted, method, base, changes, extra in cases:
        cache_size = getattr(importlib.import_module(f"simexplain_jax.saliency.{module}"), jitted)._cache_size
        first = method(embed, query, ref, key=key, options=base, **extra).maps
        compiled = cache_size()
        for change in changes:
            maps = method(embed, query, ref, key=key, options=base.replace(**change), **extra).maps
            assert not np.allclose(maps, first), (module, change)
        assert cache_size() == compiled, module
