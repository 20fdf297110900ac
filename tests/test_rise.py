import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import simexplain_jax as sx
from conftest import linear_embed_fn

rise_module = importlib.import_module("simexplain_jax.saliency._rise")


def np_cosine(a, b):
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return np.sum(a * b, -1) / np.maximum(na * nb, 1e-30)


def naive_rise(w, query, refs, masks, normalize="per_pixel", p=0.5):
    """docs/method.md (RISE) as a plain loop: s_i = cos(f(q * M_i), r); S = sum_i s_i M_i / norm."""
    n = masks.shape[0]
    maps = np.zeros((refs.shape[0],) + masks.shape[1:])
    for i in range(n):
        e = (query * masks[i][..., None]).reshape(-1).astype(np.float64) @ w
        for k in range(refs.shape[0]):
            maps[k] += np_cosine(e, refs[k]) * masks[i]
    if normalize == "per_pixel":
        return maps / (masks.sum(0) / n)
    return maps / (n * p)


@pytest.mark.parametrize("normalize", ["per_pixel", "expected"])
def test_rise_with_explicit_masks_equals_numpy_loop(linear_model, normalize):
    embed, w = linear_model
    rng = np.random.default_rng(0)
    query = rng.normal(size=(16, 16, 3)).astype(np.float32)
    refs = rng.normal(size=(3, 8)).astype(np.float32)
    masks = np.asarray(sx.masks.rise_masks((16, 16), key=jax.random.key(1), num_masks=50, grid_size=4, p=0.5))
    got = sx.saliency.rise(embed, query, refs, masks=masks, batch_size=16, normalize=normalize).maps
    assert got.shape == (3, 16, 16)
    np.testing.assert_allclose(got, naive_rise(w, query, refs, masks, normalize), rtol=1e-5)
    single = sx.saliency.rise(embed, query, refs[1], masks=masks, batch_size=16, normalize=normalize).maps
    assert single.shape == (16, 16)
    np.testing.assert_allclose(single, got[1], rtol=1e-6)


def test_key_equals_the_masks_it_generates(saliency_problem):
    embed = saliency_problem[0]  # SALIENCY_CONFIGS["rise"]'s sizes, with Rise's default sampler
    query = jnp.ones((16, 16, 3))
    ref = embed(query[None])[0]
    key = jax.random.key(7)
    from_key = sx.saliency.rise(embed, query, ref, key=key, num_masks=40, grid_size=4, p=0.4).maps
    # Rise's default sampler is the orthogonal one (rise_masks' default stays the original i.i.d. recipe)
    masks = sx.masks.rise_masks((16, 16), key=key, num_masks=40, grid_size=4, p=0.4, sampler="orthogonal")
    np.testing.assert_allclose(from_key, sx.saliency.rise(embed, query, ref, masks=masks, p=0.4).maps, rtol=1e-6)
    np.testing.assert_array_equal(from_key, sx.saliency.rise(embed, query, ref, key=key, num_masks=40, grid_size=4, p=0.4).maps)


def test_region_model_puts_mass_in_its_region(region_model):
    maps = sx.saliency.rise(region_model, region_model.query, region_model.reference, key=jax.random.key(0),
                            num_masks=16000, grid_size=32, batch_size=2000).maps
    positive = np.maximum(np.asarray(maps), 0)
    assert positive[region_model.region].sum() >= 0.9 * positive.sum()
    # a random map has about the region's area fraction inside it: the test can fail
    noise = np.asarray(sx.saliency.random(None, region_model.query, key=jax.random.key(0)).maps)
    assert noise[region_model.region].sum() < 0.7 * noise.sum()


@pytest.mark.parametrize("num_masks", [37, 256])
def test_batch_size_does_not_change_the_map(linear_model, num_masks):
    embed, _ = linear_model
    query = jax.random.normal(jax.random.key(2), (16, 16, 3))
    refs = jax.random.normal(jax.random.key(3), (2, 8))
    maps = [sx.saliency.rise(embed, query, refs, key=jax.random.key(0), num_masks=num_masks, grid_size=4,
                             batch_size=b).maps for b in (1, 7, 256)]
    for other in maps[1:]:
        np.testing.assert_allclose(other, maps[0], rtol=1e-6, atol=1e-6 * float(jnp.abs(maps[0]).max()))


def test_second_call_does_not_trace_again():
    """The embedding is traced twice by the first call (the shape probe and the chunk loop) and never
    again: chex raises if a later call (new query, reference, key or weights of the same shapes)
    traces it once more."""
    _, w = linear_embed_fn(16)

    @chex.assert_max_traces(n=2)
    def apply(weights, images):
        return images.reshape(images.shape[0], -1) @ weights

    query = jnp.ones((16, 16, 3))
    kwargs = dict(num_masks=30, grid_size=4, batch_size=8)
    sx.saliency.rise(Partial(apply, w), query, jnp.ones(8), key=jax.random.key(0), **kwargs)
    sx.saliency.rise(Partial(apply, w), query + 1, jnp.ones(8) * 2, key=jax.random.key(1), **kwargs)
    # new weights of the same shape are arguments, not constants: no new trace either
    sx.saliency.rise(Partial(apply, w * 2), query, jnp.ones(8), key=jax.random.key(1), **kwargs)
    # a new static option traces again, and chex notices (inside the shape probe, which names the query)
    with pytest.raises((AssertionError, ValueError)) as error:
        sx.saliency.rise(Partial(apply, w), query, jnp.ones(8), key=jax.random.key(1), **dict(kwargs, batch_size=4))
    assert "traced > 2 times" in str(error.value) + str(error.value.__cause__)


def test_a_sweep_over_p_and_tolerance_compiles_once(linear_model):
    """``p`` and ``tolerance`` are traced leaves of ``Rise``: new values reuse the compiled program
    (and change the maps); a static option such as ``num_masks`` compiles anew."""
    embed = linear_model[0]
    query, ref = jnp.ones((16, 16, 3)), jnp.ones(8)
    key = jax.random.key(0)
    for base in (sx.saliency.Rise(num_masks=24, grid_size=4, batch_size=8),
                 sx.saliency.Rise(num_masks=24, grid_size=4, batch_size=8, tolerance=0.5)):
        first = sx.saliency.rise(embed, query, ref, key=key, options=base)
        compiled = rise_module._rise_jit._cache_size()
        for p, tolerance in ((0.3, 0.2), (0.7, 0.05), (0.9, 0.1)):
            changes = dict(p=p) if base.tolerance is None else dict(p=p, tolerance=tolerance)
            result = sx.saliency.rise(embed, query, ref, key=key, options=base, **changes)
            assert not np.allclose(result.maps, first.maps)
        assert rise_module._rise_jit._cache_size() == compiled
    sx.saliency.rise(embed, query, ref, key=key, options=base, num_masks=16)
    assert rise_module._rise_jit._cache_size() == compiled + 1


def test_options_are_checked_hashable_and_replaced(linear_model):
    options = sx.saliency.Rise(num_masks=np.int64(24), p=jnp.float32(0.25))
    assert options == sx.saliency.Rise(num_masks=24, p=0.25) and type(options.num_masks) is int
    assert hash(options) == hash(sx.saliency.Rise(num_masks=24, p=0.25))
    assert options.replace(p=0.5) == sx.saliency.Rise(num_masks=24)
    assert options.to_dict()["similarity"] == "simexplain_jax.similarity.cosine"
    with pytest.raises(ValueError, match="grid_size"):
        sx.saliency.Rise(grid_size=0)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['num_mask'\]"):
        options.replace(num_mask=3)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['window'\]"):
        sx.saliency.rise(linear_model[0], jnp.ones((16, 16, 3)), jnp.ones(8), key=jax.random.key(0), window=3)
    with pytest.raises(TypeError, match="options must be sx.saliency.Rise"):
        sx.saliency.rise(linear_model[0], jnp.ones((16, 16, 3)), jnp.ones(8), key=jax.random.key(0),
                         options=sx.saliency.RiseVariable())
    result = sx.saliency.rise(linear_model[0], jnp.ones((16, 16, 3)), jnp.ones(8), key=jax.random.key(0),
                              num_masks=8, grid_size=2)
    assert isinstance(result, sx.saliency.SaliencyResult) and int(result.passes) == 8
    assert np.isnan(float(result.error))  # no tolerance: no error estimate


def test_peak_memory_does_not_grow_with_num_masks(linear_model):
    embed = Partial(linear_model[0])
    args = (embed, jnp.ones((16, 16, 3)), jnp.ones((1, 8)), jax.random.key(0))
    temp = []
    for n in (2000, 8000):
        options = sx.saliency.Rise(num_masks=n, grid_size=4, p=0.5, batch_size=64, normalize="per_pixel",
                                   similarity=sx.similarity.cosine)
        compiled = rise_module._rise_jit.lower(*args, options).compile()
        temp.append(compiled.memory_analysis().temp_size_in_bytes)
    assert temp[1] <= 1.01 * temp[0]


def test_rise_variable_equals_mean_of_naive_maps(linear_model):
    embed, w = linear_model
    rng = np.random.default_rng(5)
    query = rng.normal(size=(16, 16, 3)).astype(np.float32)
    reference = rng.normal(size=(16, 16, 3)).astype(np.float32)
    masks = np.asarray(sx.masks.rise_masks((16, 16), key=jax.random.key(1), num_masks=40, grid_size=4, p=0.5))
    ref_masks = np.asarray(sx.masks.rise_masks((16, 16), key=jax.random.key(2), num_masks=5, grid_size=4, p=0.5))
    got = sx.saliency.rise_variable(embed, query, reference, masks=masks, reference_masks=ref_masks, batch_size=16).maps
    naive = np.mean([
        naive_rise(w, query, ((reference * m[..., None]).reshape(1, -1).astype(np.float64) @ w), masks)[0]
        for m in ref_masks], axis=0)
    np.testing.assert_allclose(got, naive, rtol=1e-5, atol=1e-5 * np.abs(naive).max())
    key = jax.random.key(9)
    from_key = sx.saliency.rise_variable(embed, query, reference, key=key, num_masks=40, num_reference_masks=5,
                                         grid_size=4).maps
    explicit = sx.saliency.rise_variable(
        embed, query, reference, masks=sx.masks.rise_masks((16, 16), key=jax.random.fold_in(key, 0), num_masks=40,
                                                           grid_size=4, sampler="orthogonal"),
        reference_masks=sx.masks.rise_masks((16, 16), key=jax.random.fold_in(key, 1), num_masks=5, grid_size=4,
                                            sampler="orthogonal")).maps
    np.testing.assert_allclose(from_key, explicit, rtol=1e-6)


def test_rise_variable_costs_n_plus_k_forward_passes():
    embedded = []  # images embedded at run time (a host callback per executed chunk), not traced shapes
    embed, _ = linear_embed_fn(16)

    def counting(images):
        jax.debug.callback(lambda n: embedded.append(int(n)), images.shape[0])
        return embed(images)

    counting = Partial(counting)
    query, reference = jnp.ones((16, 16, 3)), jnp.ones((16, 16, 3))
    sx.saliency.rise_variable(counting, query, reference, key=jax.random.key(0), num_masks=64,
                              num_reference_masks=30, grid_size=4, batch_size=64)
    assert sum(embedded) == 64 + 30  # N masked queries + K masked references (the reference code: N * K)
    embedded.clear()
    sx.saliency.rise_variable(counting, query, jnp.stack([reference, -reference]), key=jax.random.key(0),
                              num_masks=64, num_reference_masks=30, grid_size=4, batch_size=64)
    assert sum(embedded) == 64 + 2 * 30  # two references share the N masked queries


def test_rise_variable_of_several_references_equals_one_at_a_time(linear_model):
    embed, _ = linear_model
    rng = np.random.default_rng(6)
    query = rng.normal(size=(16, 16, 3)).astype(np.float32)
    references = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
    options = dict(key=jax.random.key(4), num_masks=40, num_reference_masks=5, grid_size=4)
    together = sx.saliency.rise_variable(embed, query, references, **options).maps
    assert together.shape == (3, 16, 16)
    for k in range(3):
        alone = sx.saliency.rise_variable(embed, query, references[k], **options).maps
        np.testing.assert_allclose(together[k], alone, rtol=1e-5, atol=1e-6 * float(np.abs(alone).max()))


def test_zero_norm_embeddings_give_finite_maps():
    zero = lambda images: jnp.zeros((images.shape[0], 4))  # noqa: E731
    maps = sx.saliency.rise(zero, jnp.ones((8, 8, 3)), jnp.zeros(4), key=jax.random.key(0), num_masks=16, grid_size=2).maps
    assert np.all(np.isfinite(maps)) and float(jnp.abs(maps).max()) == 0.0
    assert np.all(np.isfinite(sx.saliency.rise_variable(zero, jnp.ones((8, 8, 3)), jnp.ones((8, 8, 3)),
                                                        key=jax.random.key(0), num_masks=16, grid_size=2).maps))


@pytest.mark.parametrize("change,message", [
    (dict(query=np.ones((16, 16))), "query"),
    (dict(query=np.ones((1, 16, 16, 3))), "query"),
    (dict(query=np.ones((16, 16, 1))), "query"),
    (dict(reference_embeddings=np.ones(5)), "reference_embeddings"),
    (dict(reference_embeddings=np.ones((2, 2, 8))), "reference_embeddings"),
    (dict(num_masks=0), "num_masks"),
    (dict(p=0.0), "p"),
    (dict(p=1.01), "p"),
    (dict(batch_size=0), "batch_size"),
    (dict(normalize="mean"), "normalize"),
    (dict(masks=np.ones((4, 8, 8))), "key"),
    (dict(p=True), "p"),
    (dict(num_masks=4.0), "num_masks"),
    (dict(key=None, masks=np.ones((4, 8, 8))), "masks"),
])
def test_bad_input_raises_value_error_naming_the_argument(linear_model, change, message):
    embed, _ = linear_model
    args = dict(embed_fn=embed, query=np.ones((16, 16, 3), np.float32), reference_embeddings=np.ones(8),
                key=jax.random.key(0), num_masks=8, grid_size=2)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        sx.saliency.rise(**args)


def test_integer_images_are_refused_not_used_as_if_normalised(linear_model):
    embed, _ = linear_model
    with pytest.raises(TypeError, match="floating-point.*normalise"):
        sx.saliency.rise(embed, np.ones((16, 16, 3), np.uint8), np.ones(8), key=jax.random.key(0), num_masks=8)
    with pytest.raises(TypeError, match="queries"):
        sx.saliency.explain_pairs("rise", embed, np.ones((2, 16, 16, 3), np.int64), np.ones((2, 16, 16, 3)),
                                  key=jax.random.key(0), pairs=[[0, 1]])


def test_numpy_and_jax_scalars_are_accepted(linear_model):
    embed, _ = linear_model
    query = np.ones((16, 16, 3), np.float32)
    a = sx.saliency.rise(embed, query, np.ones(8), key=jax.random.key(0), num_masks=np.int64(8), grid_size=2,
                         p=jnp.float32(0.5)).maps
    b = sx.saliency.rise(embed, query, np.ones(8), key=jax.random.key(0), num_masks=8, grid_size=2, p=0.5).maps
    np.testing.assert_array_equal(a, b)


def test_rise_variable_rejects_mismatched_reference(linear_model):
    embed, _ = linear_model
    with pytest.raises(ValueError, match="reference"):
        sx.saliency.rise_variable(embed, np.ones((16, 16, 3)), np.ones((16, 16, 1)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="reference_masks"):
        sx.saliency.rise_variable(embed, np.ones((16, 16, 3)), np.ones((16, 16, 3)), masks=np.ones((4, 16, 16)))
