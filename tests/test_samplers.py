"""RISE mask samplers (simexplain_jax/masks.py) and RISE to a requested precision (tolerance=)."""

import importlib
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import simexplain_jax as sx
from conftest import RegionModel
from simexplain_jax.attributes.saliency_cache import resize_maps, training_saliency

rise_module = importlib.import_module("simexplain_jax.saliency._rise")
SAMPLERS = sx.masks.SAMPLERS
BLOCKED = ("stratified", "orthogonal")


def grids(sampler, num_masks, grid_size=4, p=0.5, key=0, shape=(16, 16)):
    g, dy, dx = sx.masks.rise_grids(shape, key=jax.random.key(key), num_masks=num_masks, grid_size=grid_size, p=p,
                                    sampler=sampler)
    return np.asarray(g).reshape(num_masks, -1), np.asarray(dy), np.asarray(dx)


def test_block_sizes():
    assert [sx.masks.sampler_block(s, 8) for s in SAMPLERS] == [1, 2, 128, 128]
    assert sx.masks.sampler_block("orthogonal", 4) == 32 and sx.masks.sampler_block("stratified", 7) == 128


def upsample(g, dy, dx, grid_size=4, size=16):
    """RISE masks from grids and shifts, written out with the bilinear matrices (docs/method.md)."""
    cell = -(-size // grid_size)
    up = sx.masks.bilinear_upsample_matrix(grid_size, (grid_size + 1) * cell).astype(np.float64)
    g = g.reshape(-1, grid_size, grid_size)
    return np.stack([up[a:a + size] @ m @ up[b:b + size].T for m, a, b in zip(g, dy, dx)])


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("p", [0.5, 0.3])
def test_keep_rate_per_cell_and_per_pixel(sampler, p):
    n = 32 * 32
    g, dy, dx = grids(sampler, n, p=p)
    # per cell: a binomial(n, p) count for the i.i.d. sampler, at least as tight for the others
    bound = 4 * np.sqrt(p * (1 - p) / n)
    assert np.abs(g.mean(0) - p).max() < bound
    masks = upsample(g, dy, dx)
    assert masks.min() >= 0 and masks.max() <= 1 + 1e-6
    # per pixel: E[M(x)] = p (the upsampling rows sum to 1); a pixel averages a few cells
    assert np.abs(masks.mean(0) - p).max() < bound
    # the shift is uniform on [0, ceil(16 / 4)) per axis
    for shift in (dy, dx):
        assert set(np.unique(shift)) <= set(range(4))
        assert np.abs(np.bincount(shift, minlength=4) / n - 0.25).max() < 4 * np.sqrt(0.25 * 0.75 / (n / 32))


def test_a_sweep_over_p_of_the_mask_functions_compiles_once():
    """``p`` does not change a shape: ``rise_grids`` and ``rise_masks`` trace it, so new values reuse
    the compiled program (and change the draws), for every sampler; a new mask count compiles anew.
    (The problems are test_keep_rate_per_cell_and_per_pixel's and test_rise's, whose programs the
    compilation cache holds.)"""
    def masks(p, num_masks=50):
        return np.asarray(sx.masks.rise_masks((16, 16), key=jax.random.key(1), num_masks=num_masks, grid_size=4, p=p))

    first_masks, first_grids = masks(0.5), {s: grids(s, 32 * 32)[0] for s in SAMPLERS}
    compiled = sx.masks._rise_masks_jit._cache_size(), sx.masks._rise_grids_jit._cache_size()
    for p in (0.3, 0.7):
        assert not np.array_equal(masks(p), first_masks)
        for sampler in SAMPLERS:
            assert not np.array_equal(grids(sampler, 32 * 32, p=p)[0], first_grids[sampler])
    assert (sx.masks._rise_masks_jit._cache_size(), sx.masks._rise_grids_jit._cache_size()) == compiled
    masks(0.5, num_masks=51)
    assert sx.masks._rise_masks_jit._cache_size() == compiled[0] + 1


@pytest.mark.parametrize("sampler", BLOCKED)
@pytest.mark.parametrize("p", [0.5, 0.3])
def test_block_designs_balance_every_cell(sampler, p):
    block = sx.masks.sampler_block(sampler, 4)
    g, dy, dx = grids(sampler, 3 * block, p=p, key=5)
    counts = g.reshape(3, block, -1).sum(1)  # [blocks, cells]
    if sampler == "stratified" or p == 0.5:  # each cell kept in floor(pB) or ceil(pB) masks of every block
        assert counts.min() >= np.floor(p * block) and counts.max() <= np.ceil(p * block)
    if sampler == "stratified":  # the shifts are stratified the same way: each of 4 offsets B / 4 times
        for shift in (dy, dx):
            np.testing.assert_array_equal(np.stack([np.bincount(s, minlength=4) for s in shift.reshape(3, block)]),
                                          block // 4)


def test_orthogonal_is_a_strength_three_array_with_one_shift_per_block():
    block = sx.masks.sampler_block("orthogonal", 4)
    g, dy, dx = grids("orthogonal", 2 * block, key=3)
    g = g.reshape(2, block, 16)
    cells = range(16)
    pairs = np.array([[(g[b, :, c] * g[b, :, d]).sum() for c, d in itertools.combinations(cells, 2)] for b in range(2)])
    triples = np.array([[(g[b, :, c] * g[b, :, d] * g[b, :, e]).sum() for c, d, e in itertools.combinations(cells, 3)]
                        for b in range(2)])
    np.testing.assert_array_equal(g.sum(1), block / 2)
    np.testing.assert_array_equal(pairs, block / 4)
    np.testing.assert_array_equal(triples, block / 8)
    assert len(set(dy[:block])) == 1 and len(set(dx[:block])) == 1
    assert not np.array_equal(g[0], g[1])  # blocks are randomised independently
    # the masks are these grids upsampled and shifted (the same code path for every sampler)
    masks = sx.masks.rise_masks((16, 16), key=jax.random.key(3), num_masks=2 * block, grid_size=4,
                                sampler="orthogonal")
    np.testing.assert_allclose(masks, upsample(g, dy, dx), atol=1e-6)


def test_antithetic_pairs_are_complements():
    masks = np.asarray(sx.masks.rise_masks((16, 16), key=jax.random.key(2), num_masks=20, grid_size=4,
                                           sampler="antithetic"))
    np.testing.assert_allclose(masks[0::2] + masks[1::2], 1.0, atol=1e-6)
    assert not np.allclose(masks[0], masks[2])


@pytest.mark.parametrize("sampler", SAMPLERS[1:])
def test_each_mask_depends_only_on_its_index(sampler):
    key = jax.random.key(4)
    masks_for = jax.jit(sx.masks.rise_mask_fn((16, 16), key=key, grid_size=4, sampler=sampler))
    every = np.asarray(masks_for(jnp.arange(100)))
    picked = np.random.default_rng(0).permutation(100) + np.repeat([0, 100], 50)  # any order, any blocks
    shuffled = np.asarray(masks_for(jnp.asarray(picked)))
    np.testing.assert_allclose(shuffled[picked < 100], every[picked[picked < 100]], atol=1e-6)
    assert not np.allclose(shuffled[picked >= 100], every[picked[picked >= 100] - 100])


def region_maps(sampler, keys=48, num_masks=64, normalize="per_pixel"):
    """``[keys, 16, 16]`` RISE maps of the analytic region model (conftest.RegionModel: the score
    is the cosine of ``[kept fraction of the box - 0.5, 0.1]`` with ``[1, 0]``), written out in
    NumPy from the sampler's masks; consecutive runs of ``num_masks`` masks (whole blocks) are
    independent maps."""
    model = RegionModel(16, (2, 2, 10, 10))
    masks = np.asarray(sx.masks.rise_masks((16, 16), key=jax.random.key(11), num_masks=keys * num_masks,
                                           grid_size=4, sampler=sampler), np.float64)
    kept = (masks * model.region).sum((1, 2)) / model.region.sum() - 0.5
    scores = kept / np.hypot(kept, 0.1)
    weighted = np.einsum("kn,knhw->khw", scores.reshape(keys, num_masks), masks.reshape(keys, num_masks, 16, 16))
    if normalize == "per_pixel":
        return model, weighted / (masks.reshape(keys, num_masks, 16, 16).sum(1) / num_masks)
    return model, weighted / (num_masks * 0.5)


def test_samplers_are_unbiased():
    """The mean map over 48 keys of every sampler equals the i.i.d. mean within 5 standard errors
    at every pixel (the expected map is the same for all: each mask has the i.i.d. distribution),
    with both normalisations (the per-pixel ratio's O(1/N) bias is far below that at N = 64)."""
    for normalize in ("expected", "per_pixel"):
        model, iid = region_maps("iid", normalize=normalize)
        for sampler in SAMPLERS[1:]:
            _, other = region_maps(sampler, normalize=normalize)
            error = np.sqrt(iid.var(0, ddof=1) / len(iid) + other.var(0, ddof=1) / len(other))
            assert np.all(np.abs(other.mean(0) - iid.mean(0)) < 5 * error + 1e-9), (sampler, normalize)
            # and the map is the region's: the box is brighter than the rest on average
            assert other.mean(0)[model.region].mean() > other.mean(0)[~model.region].mean()


def test_orthogonal_masks_lower_the_variance_of_an_additive_score():
    """A score that is linear in the mask is, for a fixed shift, a sum over the cells: the
    strength-3 design removes the other cells' noise from each block's sum (module docstring)."""
    weights = np.random.default_rng(0).normal(size=(16, 16))
    spread = {}
    for sampler in ("iid", "orthogonal"):
        masks = np.asarray(sx.masks.rise_masks((16, 16), key=jax.random.key(1), num_masks=48 * 64, grid_size=4,
                                               sampler=sampler), np.float64).reshape(48, 64, 16, 16)
        maps = np.einsum("kn,knhw->khw", (masks * weights).sum((2, 3)), masks) / (64 * 0.5)
        spread[sampler] = maps.std(0).mean()
    assert spread["orthogonal"] < 0.5 * spread["iid"]


def test_maps_do_not_depend_on_chunks_or_devices(linear_model):
    """Each mask comes from its index, so the masks a device or a chunk gets do not matter (the
    block samplers' blocks straddle chunks and devices here: 100 masks in blocks of 32)."""
    embed, _ = linear_model
    rng = np.random.default_rng(3)
    queries = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
    pairs = np.array([[0, 1], [1, 2], [2, 0], [0, 2]])
    config = dict(num_masks=100, grid_size=4, sampler="orthogonal", batch_size=64)
    key = jax.random.key(0)
    one = sx.saliency.explain_pairs("rise", embed, queries, queries, key=key, pairs=pairs, config=config)
    refs = embed(jnp.asarray(queries[[1, 2]]))
    split = sx.saliency.rise_split_masks(embed, queries[0], refs, key=jax.random.fold_in(key, 0),
                                         mesh=sx.parallel.make_mesh(8), **dict(config, batch_size=7))
    np.testing.assert_allclose(split.maps, one[[0, 3]], rtol=1e-5, atol=1e-5 * np.abs(one).max())


# ---- tolerance


def test_tolerance_that_cannot_be_met_gives_the_full_map(linear_model):
    embed, _ = linear_model
    query = jax.random.normal(jax.random.key(2), (16, 16, 3))
    refs = jax.random.normal(jax.random.key(3), (2, 8))
    for sampler, normalize in (("orthogonal", "expected"),):
        kwargs = dict(key=jax.random.key(0), num_masks=130, grid_size=4, batch_size=64, sampler=sampler,
                      normalize=normalize)
        full = sx.saliency.rise(embed, query, refs, **kwargs).maps
        result = sx.saliency.rise(embed, query, refs, tolerance=1e-9, **kwargs)
        assert isinstance(result, sx.saliency.SaliencyResult) and int(result.passes) == 130
        assert result.error.shape == (2,) and np.all(np.asarray(result.error) >= 1e-9)
        np.testing.assert_allclose(result.maps, full, rtol=1e-5, atol=1e-5 * float(jnp.abs(full).max()))


def test_a_constant_score_stops_at_the_first_check():
    """A model that ignores the image has a flat map with zero standard error: the loop stops
    after its first chunk holding MIN_GROUPS groups."""
    def constant(images):
        return jnp.ones((images.shape[0], 4)) + 0.0 * images[:, 0, 0, :1]

    query = jnp.ones((16, 16, 3))
    assert rise_module.MIN_GROUPS == 4
    # iid: groups of 1 mask, a chunk of 64 holds 64 groups; orthogonal at s = 4: groups of 32 masks,
    # so 4 groups take 128 masks (four chunks of 32)
    for sampler, batch, expected in (("iid", 64, 64), ("orthogonal", 32, 128)):
        result = sx.saliency.rise(constant, query, jnp.ones(4), key=jax.random.key(0), num_masks=1000, grid_size=4,
                                  batch_size=batch, sampler=sampler, tolerance=0.01)
        assert int(result.passes) == expected, sampler
        assert float(result.error) < 0.01
        np.testing.assert_allclose(result.maps, expected, rtol=1e-5)  # N x the similarity 1 everywhere


def test_tolerance_stops_earlier_on_an_easy_case_and_never_exceeds_the_maximum():
    """Easy: the score follows a quarter of the image smoothly. Noisy: the same plus a term that
    varies wildly with the mask and with nothing in the image, so its map needs more masks."""
    region = RegionModel(16, (0, 0, 8, 8))
    noise_weights = jnp.asarray(np.random.default_rng(0).normal(size=(16, 16)), jnp.float32)

    def noisy(images):
        clean = region(images)
        wild = jnp.sin(40.0 * jnp.sum(images[..., 0] * noise_weights, axis=(1, 2)))
        return clean.at[:, 0].add(0.3 * wild)

    kwargs = dict(key=jax.random.key(0), num_masks=3000, grid_size=4, batch_size=64, tolerance=0.04)
    easy = sx.saliency.rise(region, region.query, region.reference, **kwargs)
    hard = sx.saliency.rise(noisy, region.query, region.reference, **kwargs)
    assert int(easy.passes) < int(hard.passes) <= 3000
    assert float(easy.error) < 0.04 and float(hard.error) < 0.04
    assert int(easy.passes) % 64 == 0 and int(hard.passes) % 64 == 0


@pytest.mark.parametrize("sampler,normalize", [("iid", "per_pixel"), ("orthogonal", "expected")])
def test_standard_error_matches_the_spread_over_keys(sampler, normalize):
    """The estimated standard error (SaliencyResult.error times the map's range: the root mean
    square over the pixels of the standard errors of the map minus its mean) agrees with the root
    mean square of the per-pixel standard deviations over 64 keys of the maps minus their means
    to within 25%."""
    model = RegionModel(16, (4, 4, 12, 12))
    core = jax.jit(jax.vmap(lambda k: rise_module.rise_core(
        Partial(model), model.query, model.reference[None], k,
        sx.saliency.Rise(num_masks=256, grid_size=4, p=0.5, batch_size=64, normalize=normalize,
                         similarity=sx.similarity.cosine, sampler=sampler, tolerance=1e-9))))
    out = core(jax.random.split(jax.random.key(5), 64))
    maps, passes, error = out.maps, out.passes, out.error
    maps, error = np.asarray(maps)[:, 0], np.asarray(error)[:, 0]
    assert np.all(np.asarray(passes) == 256)
    estimated = np.mean(error * (maps.max((1, 2)) - maps.min((1, 2))))
    centred = maps - maps.mean((1, 2), keepdims=True)
    assert 0.8 < estimated / np.sqrt(np.mean(centred.var(0, ddof=1))) < 1.25


def test_tolerance_is_the_same_over_devices_and_in_explain_pairs(linear_model):
    embed, _ = linear_model
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
    key = jax.random.key(3)
    config = dict(num_masks=2000, grid_size=4, batch_size=256, sampler="orthogonal", tolerance=0.05)
    refs = embed(jnp.asarray(queries[[1]]))
    single = sx.saliency.rise(embed, queries[0], refs[0], key=jax.random.fold_in(key, 0), **config)
    assert 256 <= int(single.passes) < 2000
    split = sx.saliency.rise_split_masks(embed, queries[0], refs[0], key=jax.random.fold_in(key, 0),
                                         mesh=sx.parallel.make_mesh(8), **config)  # 8 devices x 32 B divides 256
    assert int(split.passes) == int(single.passes)
    np.testing.assert_allclose(split.maps, single.maps, rtol=1e-5, atol=1e-5 * float(jnp.abs(single.maps).max()))
    maps = sx.saliency.explain_pairs("rise", embed, queries, queries, key=key, pairs=np.array([[0, 1], [1, 0]]),
                                     config=config, mesh=sx.parallel.make_mesh(8, masks=8))
    np.testing.assert_allclose(maps[0], single.maps, rtol=1e-5, atol=1e-5 * float(jnp.abs(single.maps).max()))


def test_rise_variable_with_tolerance(linear_model):
    embed, _ = linear_model
    rng = np.random.default_rng(2)
    query, reference = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
    kwargs = dict(key=jax.random.key(1), num_masks=192, num_reference_masks=3, grid_size=4, batch_size=64)
    full = sx.saliency.rise_variable(embed, query, reference, **kwargs).maps
    capped = sx.saliency.rise_variable(embed, query, reference, tolerance=1e-9, **kwargs)
    assert int(capped.passes) == 192  # the loop's sums (scores averaged over the J masked references) are the map's
    np.testing.assert_allclose(capped.maps, full, rtol=1e-5, atol=1e-5 * float(jnp.abs(full).max()))


@pytest.mark.parametrize("kwargs,name", [
    (dict(sampler="sobol"), "sampler"), (dict(sampler=None), "sampler"),
    (dict(tolerance=0.0), "tolerance"), (dict(tolerance=-1.0), "tolerance"), (dict(tolerance="0.1"), "tolerance"),
    (dict(tolerance=True), "tolerance"), (dict(tolerance=float("inf")), "tolerance"),
])
def test_bad_sampler_and_tolerance(linear_model, kwargs, name):
    embed, _ = linear_model
    with pytest.raises(ValueError, match=name):
        sx.saliency.rise(embed, jnp.ones((16, 16, 3)), jnp.ones(8), key=jax.random.key(0), num_masks=8, **kwargs)
    with pytest.raises(ValueError, match=name):
        images = np.ones((1, 16, 16, 3), np.float32)
        sx.saliency.explain_pairs("rise", embed, images, images, key=jax.random.key(0), pairs=[[0, 0]],
                                  config=dict(num_masks=8, **kwargs))
    if name == "sampler":
        with pytest.raises(ValueError, match=name):
            sx.masks.rise_masks((16, 16), key=jax.random.key(0), num_masks=4, **kwargs)


def test_training_saliency_cache_passes_the_sampler_through(linear_model, tmp_path):
    embed, _ = linear_model
    images = np.random.default_rng(4).normal(size=(4, 16, 16, 3)).astype(np.float32)
    references = [[1, 2], [0, 3], [3, 1], [0, 1]]
    config = dict(num_masks=64, grid_size=4, batch_size=64, sampler="orthogonal")
    key = jax.random.key(2)
    maps, valid = training_saliency("rise", embed, images, references, key=key, config=config, grid=4,
                                    max_references=2, directory=str(tmp_path / "cache"))
    pairs = np.array([(i, r) for i, refs in enumerate(references) for r in refs])
    expected = resize_maps(sx.saliency.explain_pairs("rise", embed, images, images, key=key, pairs=pairs,
                                                     config=config), 4)
    np.testing.assert_allclose(maps[valid], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    with pytest.raises(ValueError, match="sampler"):  # the cache records the sampler it was made with
        training_saliency("rise", embed, images, references, key=key, config=dict(config, sampler="iid"), grid=4,
                          max_references=2, directory=str(tmp_path / "cache"))
