import jax
import numpy as np
import pytest

import simexplain_jax as sx


@pytest.fixture
def setup(linear_model):
    embed, _ = linear_model
    rng = np.random.default_rng(0)
    images = rng.normal(size=(5, 16, 16, 3)).astype(np.float32)
    pairs = np.array([[0, 1], [2, 3], [0, 4], [1, 0], [0, 2]])  # query 0 has three references
    return embed, images, pairs


@pytest.mark.parametrize("method,config", [
    ("rise", dict(num_masks=40, grid_size=4)),
    ("rise_variable", dict(num_masks=40, grid_size=4, num_reference_masks=3)),
    ("sliding_window", dict(window=6, stride=4, padding=2)),
    ("lime", dict(num_samples=40, num_segments=8)),
    ("gradient", {}),
])
def test_explain_pairs_equals_single_pair_calls(setup, method, config):
    embed, images, pairs = setup
    key = jax.random.key(3)
    finished = []
    maps = sx.saliency.explain_pairs(method, embed, images, images, key=key, pairs=pairs, config=config,
                                     progress=finished.append)
    assert maps.shape == (5, 16, 16) and sum(finished) == 5
    for i, (q, r) in enumerate(pairs):
        qk = jax.random.fold_in(key, int(q))
        emb = embed(images[r][None])[0]
        if method == "rise":
            single = sx.saliency.rise(embed, images[q], emb, key=qk, **config)
        elif method == "rise_variable":
            single = sx.saliency.rise_variable(embed, images[q], images[r], key=qk, **config)
        elif method == "sliding_window":
            single = sx.saliency.sliding_window(embed, images[q], emb, **config)
        elif method == "lime":
            single = sx.saliency.lime(embed, images[q], emb, key=qk, **config)
        else:
            single = sx.saliency.gradient(embed, images[q], emb)
        np.testing.assert_allclose(maps[i], single, rtol=1e-4, atol=1e-5 * float(np.abs(single).max()) + 1e-7)


def test_explain_pairs_perturbation_matches_batch_call(setup):
    embed, images, pairs = setup
    key = jax.random.key(1)
    maps = sx.saliency.explain_pairs("perturbation", embed, images, images, key=key, pairs=pairs,
                                     config=dict(num_steps=5), pair_batch=2)
    keys = jax.numpy.stack([jax.random.fold_in(key, int(q)) for q in pairs[:, 0]])
    expected = sx.saliency.perturbation_batch(embed, images[pairs[:, 0]], embed(images[pairs[:, 1]]), key=keys,
                                              num_steps=5)
    np.testing.assert_allclose(maps, expected, atol=1e-5)


def test_cache_is_reused_and_resumes(setup, tmp_path):
    embed, images, pairs = setup
    config = dict(num_masks=40, grid_size=4)
    first = sx.saliency.explain_pairs("rise", embed, images, images, key=jax.random.key(0), pairs=pairs,
                                      config=config, cache_dir=str(tmp_path))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["meta.json", "q0.npz", "q1.npz", "q2.npz"]
    (tmp_path / "q2.npz").unlink()  # as if killed before the last query
    calls = []

    def counting(images_batch):
        calls.append(images_batch.shape[0])
        return embed(images_batch)

    again = sx.saliency.explain_pairs("rise", counting, images, images, key=jax.random.key(0), pairs=pairs,
                                      config=config, cache_dir=str(tmp_path))
    np.testing.assert_allclose(again, first, rtol=1e-6)
    assert (tmp_path / "q2.npz").exists()
    with pytest.raises(ValueError, match="written with"):
        sx.saliency.explain_pairs("rise", embed, images, images, key=jax.random.key(0), pairs=pairs,
                                  config=dict(num_masks=20, grid_size=4), cache_dir=str(tmp_path))


def test_bad_arguments(setup):
    embed, images, pairs = setup
    with pytest.raises(ValueError, match="method"):
        sx.saliency.explain_pairs("shap", embed, images, images, key=jax.random.key(0), pairs=pairs)
    with pytest.raises(ValueError, match="pairs"):
        sx.saliency.explain_pairs("rise", embed, images, images, key=jax.random.key(0), pairs=np.zeros((0, 2), int))
    with pytest.raises(ValueError, match="outside"):
        sx.saliency.explain_pairs("rise", embed, images, images, key=jax.random.key(0), pairs=[[0, 9]])
