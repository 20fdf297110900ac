import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import simexplain_jax as sx
from simexplain_jax.metrics.causal import FLAT_TOLERANCE


def np_cosine(a, b):
    return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def naive_insertion_deletion(w, query, ref, saliency, insertion_background, deletion_background, steps=101,
                             normalize=True):
    """docs/method.md (insertion and deletion) as a plain loop."""
    h, wd = saliency.shape
    order = np.argsort(-saliency.reshape(-1), kind="stable")
    curves = {"insertion": [], "deletion": []}
    for t in np.linspace(0, 1, steps):
        k = max(int(np.round(h * wd * t)), 1)
        top = np.zeros(h * wd, bool)
        top[order[:k]] = True
        top = top.reshape(h, wd)[..., None]
        inserted = np.where(top, query, insertion_background)
        deleted = np.where(top, deletion_background, query)
        curves["insertion"].append(np_cosine(inserted.reshape(-1).astype(np.float64) @ w, ref))
        curves["deletion"].append(np_cosine(deleted.reshape(-1).astype(np.float64) @ w, ref))
    out = {}
    for name, c in curves.items():
        c = np.asarray(c)
        if normalize:
            c = (c - c.min()) / (c.max() - c.min())
        out[name] = (c, np.trapezoid(c, dx=1 / (steps - 1)))
    return out


@pytest.mark.parametrize("normalize", ["minmax", "none"])
def test_sane_protocol_equals_plain_loop(linear_model, normalize):
    embed, w = linear_model
    rng = np.random.default_rng(0)
    query = rng.normal(size=(16, 16, 3)).astype(np.float32)
    ref = rng.normal(size=8).astype(np.float32)
    saliency = rng.normal(size=(16, 16)).astype(np.float32)
    background = np.array([0.5, -0.2, 1.0], np.float32)
    got = sx.metrics.insertion_deletion(embed, query, ref, saliency, background=background, normalize=normalize,
                                        batch_size=33)
    expected = naive_insertion_deletion(w, query, ref, saliency, background, background,
                                        normalize=normalize == "minmax")
    np.testing.assert_allclose(got.insertion_curve, expected["insertion"][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.deletion_curve, expected["deletion"][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.insertion_auc, expected["insertion"][1], rtol=1e-4)
    np.testing.assert_allclose(got.deletion_auc, expected["deletion"][1], rtol=1e-4)


def test_rise_protocol_uses_blur_and_zeros(linear_model):
    embed, w = linear_model
    rng = np.random.default_rng(1)
    query = rng.normal(size=(16, 16, 3)).astype(np.float32)
    ref = rng.normal(size=8).astype(np.float32)
    saliency = rng.normal(size=(16, 16)).astype(np.float32)
    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1.0
    gkern = ndimage.gaussian_filter(impulse, 5.0)  # RISE's gkern(11, 5)
    blurred = np.stack([ndimage.convolve(query[..., c], gkern, mode="constant") for c in range(3)], -1)
    got = sx.metrics.insertion_deletion(embed, query, ref, saliency, protocol="rise", num_steps=21)
    expected = naive_insertion_deletion(w, query, ref, saliency, blurred, 0.0, steps=21)
    np.testing.assert_allclose(got.insertion_curve, expected["insertion"][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.deletion_curve, expected["deletion"][0], rtol=1e-4, atol=1e-5)


def test_good_saliency_beats_reversed_saliency(region_model):
    saliency = np.where(region_model.region, 1.0, 0.0) + np.random.default_rng(0).uniform(0, 0.1, (32, 32))
    good = sx.metrics.insertion_deletion(region_model, region_model.query, region_model.reference, saliency,
                                         background=0.0)
    bad = sx.metrics.insertion_deletion(region_model, region_model.query, region_model.reference, -saliency,
                                        background=0.0)
    assert float(good.insertion_auc) > float(bad.insertion_auc) + 0.2
    assert float(good.deletion_auc) < float(bad.deletion_auc) - 0.2


def test_flat_curves_and_zero_embeddings_are_finite():
    zero = lambda images: jnp.zeros((images.shape[0], 4))  # noqa: E731
    result = sx.metrics.insertion_deletion(zero, jnp.ones((8, 8, 3)), jnp.ones(4), jnp.ones((8, 8)), background=0.0)
    assert float(result.insertion_auc) == pytest.approx(0.5) and float(result.deletion_auc) == pytest.approx(0.5)
    assert np.all(np.isfinite(result.insertion_curve)) and np.all(np.isfinite(result.deletion_curve))
    assert float(sx.metrics.minmax_normalize(jnp.full(5, 3.0))[0]) == 0.5
    # a curve whose range is within the tolerance is flat; one just above it is normalised to [0, 1]
    within = jnp.array([0.0, 0.5, 1.0]) * FLAT_TOLERANCE
    np.testing.assert_array_equal(sx.metrics.minmax_normalize(within), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(sx.metrics.minmax_normalize(within * 4), [0.0, 0.5, 1.0], atol=1e-6)


def test_batch_size_invariance(linear_model):
    embed, _ = linear_model
    query = jax.random.normal(jax.random.key(0), (16, 16, 3))
    saliency = jax.random.uniform(jax.random.key(1), (16, 16))
    ref = embed(query[None])[0]
    results = [sx.metrics.insertion_deletion(embed, query, ref, saliency, background=0.0, batch_size=b)
               for b in (1, 7, 256)]
    for other in results[1:]:
        np.testing.assert_allclose(other.insertion_curve, results[0].insertion_curve, atol=1e-6)
        np.testing.assert_allclose(other.deletion_auc, results[0].deletion_auc, atol=1e-6)


@pytest.mark.parametrize("change,message", [
    (dict(saliency=np.ones((8, 8))), "saliency"),
    (dict(saliency=np.full((16, 16), np.nan)), "saliency"),
    (dict(reference_embedding=np.ones((1, 8))), "reference_embedding"),
    (dict(reference_embedding=np.ones(3)), "reference_embedding"),
    (dict(background=None), "background"),
    (dict(background=np.zeros(4)), "background"),
    (dict(protocol="lime"), "protocol"),
    (dict(protocol="rise"), "background"),
    (dict(num_steps=1), "num_steps"),
    (dict(normalize="z"), "normalize"),
])
def test_bad_input(linear_model, change, message):
    embed, _ = linear_model
    args = dict(embed_fn=embed, query=np.ones((16, 16, 3), np.float32), reference_embedding=np.ones(8),
                saliency=np.ones((16, 16)), background=0.0)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        sx.metrics.insertion_deletion(**args)


def test_batched_insertion_deletion_equals_per_pair_calls(linear_model):
    embed, _ = linear_model
    rng = np.random.default_rng(4)
    queries = rng.normal(size=(5, 16, 16, 3)).astype(np.float32)
    refs = rng.normal(size=(5, 8)).astype(np.float32)
    maps = rng.normal(size=(5, 16, 16)).astype(np.float32)
    batch = sx.metrics.insertion_deletion_batch(embed, queries, refs, maps, background=0.3, num_steps=21,
                                                pair_group=2)
    for i in range(5):
        one = sx.metrics.insertion_deletion(embed, queries[i], refs[i], maps[i], background=0.3, num_steps=21)
        np.testing.assert_allclose(batch.insertion_curve[i], one.insertion_curve, atol=1e-5)
        np.testing.assert_allclose(batch.deletion_auc[i], one.deletion_auc, atol=1e-5)
