import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simexplain_jax as sx
from simexplain_jax.attributes import Thresholds, saliency_matching_loss, saliency_targets, select
from simexplain_jax.attributes.losses import classification_loss
from simexplain_jax.models import SmallCNN
from simexplain_jax.models.attributes import AttributePredictor, spatial_softmax
from simexplain_jax.train import similarity as sim
from simexplain_jax.models.loading import load_attribute_predictor
from simexplain_jax.train.attributes import make_attribute_step


def test_eq2_equals_naive_loop():
    rng = np.random.default_rng(0)
    b, a, k, p = 3, 5, 4, 9
    attention = jax.nn.softmax(jnp.asarray(rng.normal(size=(b, a, p))), -1)
    targets = saliency_targets(jnp.asarray(rng.normal(size=(b, k, 3, 3)) * 3))
    valid = np.array([[1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 1]], bool)
    labels = np.array([[1, 0, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]], bool)
    got = saliency_matching_loss(attention, targets, jnp.asarray(valid), jnp.asarray(labels))
    terms = []
    for i in range(b):
        for j in range(k):
            if valid[i, j]:
                d = [np.linalg.norm(np.asarray(attention[i, c]) - np.asarray(targets[i, j])) for c in range(a) if labels[i, c]]
                terms.append(min(1.0, min(d)))
    np.testing.assert_allclose(got, np.mean(terms), rtol=1e-5)
    # z-scored targets are not one-hot even for raw RISE-scale maps; raw ones are
    raw = np.zeros((1, 3, 3)) + 1000.0
    raw[0, 1, 1] = 1100.0
    assert float(saliency_targets(jnp.asarray(raw), "raw").max()) > 0.999
    assert float(saliency_targets(jnp.asarray(raw), "zscore").max()) < 0.999


def test_classification_losses():
    scores = jnp.array([[3.0, -3.0, 0.0]])
    labels = jnp.array([[1, 0, 1]])
    bce = classification_loss(scores, labels)
    expected = -np.mean([np.log(1 / (1 + np.exp(-3))), np.log(1 - 1 / (1 + np.exp(3))), np.log(0.5)])
    np.testing.assert_allclose(bce, expected, rtol=1e-5)
    # the reference code's loss: SmoothL1 (Huber, delta 1) between softmax(scores) and labels / |labels|
    softmax = np.exp([3.0, -3.0, 0.0]) / np.exp([3.0, -3.0, 0.0]).sum()
    difference = softmax - np.array([0.5, 0.0, 0.5])
    huber = np.where(np.abs(difference) <= 1.0, 0.5 * difference ** 2, np.abs(difference) - 0.5)
    np.testing.assert_allclose(classification_loss(scores, labels, "softmax_smoothl1"), huber.mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="classification loss"):
        classification_loss(scores, labels, "hinge")


def test_predictor_steps_lower_both_losses():
    model = AttributePredictor(SmallCNN(features=(8, 16, 16)), num_attributes=6)
    optimizer = sim.make_optimizer(1e-2)
    state = sim.create_train_state(model, optimizer, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(0)
    saliency = rng.normal(size=(8, 2, 4, 4)).astype(np.float32)
    saliency[:, :, 1, 2] += 4.0  # a consistent hot spot to match
    batch = {"image": jnp.asarray(rng.normal(size=(8, 32, 32, 3)), jnp.float32),
             "attributes": jnp.asarray(rng.integers(0, 2, (8, 6)).astype(bool)),
             "saliency": jnp.asarray(saliency), "valid": jnp.ones((8, 2), bool)}
    step = make_attribute_step(lam=1.0)
    history = []
    for _ in range(25):
        state, metrics = step(state, batch)
        history.append((float(metrics["classification"]), float(metrics["matching"])))
    assert history[-1][0] < history[0][0] and history[-1][1] < history[0][1]
    scores, aams = model.apply(state.variables(), batch["image"])
    assert scores.shape == (8, 6) and aams.shape == (8, 4, 4, 6)
    np.testing.assert_allclose(spatial_softmax(aams).sum(-1), 1.0, rtol=1e-5)


def test_mean_average_precision_against_its_definition():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(30, 4))
    labels = rng.integers(0, 2, (30, 4)).astype(bool)
    labels[:, 3] = False  # no positive: skipped
    expected = []
    for a in range(3):
        order = np.argsort(-scores[:, a])
        hits = labels[order, a]
        expected.append(np.mean([hits[: k + 1].mean() for k in range(30) if hits[k]]))
    assert sx.metrics.mean_average_precision(scores, labels) == pytest.approx(np.mean(expected))


def test_calibration_refuses_test_labels_and_maximises_f1():
    scores = np.array([[0.1], [0.4], [0.35], [0.8]])
    labels = np.array([[0], [1], [0], [1]])
    thresholds = Thresholds.fit(scores, labels, split="validation")
    assert thresholds.values[0] == pytest.approx(0.4)
    assert thresholds.present(np.array([0.5])).tolist() == [True]
    with pytest.raises(ValueError, match="test"):
        Thresholds.fit(scores, labels, split="test")


def test_selection_weights():
    thresholds = Thresholds(np.zeros(3) - 10, "validation")  # everything present
    scores = np.array([3.0, 1.0, 0.0])  # confidence order: 0, 1, 2
    aams = np.zeros((2, 2, 3))
    aams[1, 1, 2] = 9.0  # attribute 2's map matches the saliency's hot spot
    aams[0, 0, 1] = 9.0
    saliency = np.array([[0.0, 0.0], [0.0, 5.0]])
    assert select(scores, aams, saliency, thresholds, w=1.0).attributes == [0, 1, 2]
    assert select(scores, aams, saliency, thresholds, w=0.0).attributes[0] == 2
    partial = Thresholds(np.array([-10, -10, 10.0]), "validation")  # attribute 2 absent
    assert 2 not in select(scores, aams, saliency, partial, w=0.0).attributes
    pair = select(scores, aams, saliency, thresholds, w=0.0, selector="pair_aware", reference_scores=np.array(
        [3.0, 1.0, -20.0]), reference_aams=aams, reference_saliency=saliency)
    assert 2 not in pair.attributes and pair.attributes  # absent from the reference (-20 < -10): not shared
    with pytest.raises(ValueError, match="pair_aware"):
        select(scores, aams, saliency, thresholds, selector="pair_aware")


def test_counterfactual_oracle_finds_the_known_answer():
    from simexplain_jax.attributes.counterfactual import oracle, without
    from simexplain_jax.data import shapes

    red = np.array(shapes.COLORS_RGB["red"], np.float32)

    def redness(images):  # an embedding that only sees red pixels
        rgb = images * jnp.array([0.229, 0.224, 0.225]) + jnp.array([0.485, 0.456, 0.406])
        close = jnp.exp(-jnp.sum((rgb * 255 - red) ** 2, -1) / 2000.0)
        fraction = jnp.mean(close, axis=(1, 2))
        return jnp.stack([fraction, jnp.full_like(fraction, 0.01)], -1)

    scene = shapes.sample_scene(np.random.default_rng(0), shapes.CLASS_NAMES.index("color:red"))
    best, drops = oracle(redness, scene, jnp.array([1.0, 0.0]), 32)
    assert best == "color:red" and drops["color:red"] > 0
    assert shapes.scene_class(without(scene, "color:red")) is None


def test_removal_drops_equal_the_direct_computation():
    """``removal_drops`` embeds the query and its K edits in one compiled batch; the drops equal
    ``s(q, r) - s(q with the attribute's top region zeroed, r)`` computed here call by call, for
    a plain function (not a Partial) as the embedding."""
    from simexplain_jax.attributes.removal import activation_regions, removal_drops
    from simexplain_jax.similarity import cosine

    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(8 * 8 * 3, 4)).astype(np.float32) / 10)

    def embed(images):
        return jnp.tanh(images.reshape(images.shape[0], -1) @ w) + 0.1

    query = rng.normal(size=(8, 8, 3)).astype(np.float32)
    aams = rng.uniform(size=(4, 4, 5)).astype(np.float32)
    reference = np.asarray(embed(jnp.asarray(rng.normal(size=(1, 8, 8, 3)).astype(np.float32))))[0]
    drops = removal_drops(embed, query, reference, aams, [3, 0, 4], fraction=0.25)
    regions = activation_regions(aams, [3, 0, 4], query.shape, 0.25)
    assert regions.shape == (3, 8, 8) and (regions.sum(axis=(1, 2)) >= 16).all()  # the top quarter of 64 pixels

    def score(image):
        return float(cosine(embed(jnp.asarray(image)[None]), jnp.asarray(reference)[None])[0])

    expected = [score(query) - score(query * ~region[..., None]) for region in regions]
    np.testing.assert_allclose(drops, expected, rtol=1e-5, atol=1e-6)
    assert np.ptp(drops) > 0 and removal_drops(embed, query, reference, aams, []).shape == (0,)


def test_apply_in_chunks_takes_a_plain_function_and_pads_the_last_chunk():
    from simexplain_jax.engine import apply_in_chunks

    def fn(images):
        return {"sum": images.sum(axis=(1, 2)), "first": images[:, 0, 0]}

    images = np.arange(7 * 2 * 2, dtype=np.float32).reshape(7, 2, 2)
    for batch_size in (1, 3, 7, 100):
        out = apply_in_chunks(fn, images, batch_size=batch_size)
        np.testing.assert_array_equal(out["sum"], images.sum(axis=(1, 2)))
        np.testing.assert_array_equal(out["first"], images[:, 0, 0])


def test_thresholds_round_trip_through_json_and_bad_files_are_named(tmp_path):
    scores = np.array([[0.1, 0.3, 0.0], [0.4, 0.2, 0.0], [0.35, 0.9, 0.0], [0.8, 0.1, 0.0]])
    labels = np.array([[0, 1, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]])  # attribute 2 has no positive: +inf
    fitted = Thresholds.fit(scores, labels, split="train")
    path = tmp_path / "run" / "thresholds.json"
    fitted.save(path)
    fitted.save(path)  # overwritten in place, no temporary file left beside it
    assert sorted(p.name for p in path.parent.iterdir()) == ["thresholds.json"]
    loaded = Thresholds.load(path, num_attributes=3)
    assert loaded.split == "train" and loaded.values.tolist() == [0.4, 0.3, np.inf]
    np.testing.assert_array_equal(loaded.present(scores), fitted.present(scores))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        Thresholds.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="holds 3 values, expected 4"):
        Thresholds.load(path, num_attributes=4)
    path.write_text(path.read_text()[:20])  # a truncated write
    with pytest.raises(ValueError, match=f"{path}.*not a thresholds JSON"):
        Thresholds.load(path)
    path.write_text('{"split": "test", "values": [0.5]}')
    with pytest.raises(ValueError, match="split must be one of"):
        Thresholds.load(path)


def test_explain_refuses_a_predictor_without_thresholds(tmp_path):
    """``experiments.explain --attributes`` stops with the missing file's name instead of using
    thresholds of 0 (every attribute "present")."""
    from experiments import explain
    from simexplain_jax.checkpoint import Checkpointer
    from simexplain_jax.models.factory import backbone

    model = AttributePredictor(backbone("small_cnn", width=8, stages=3), num_attributes=3)
    state = sim.create_train_state(model, sim.make_optimizer(1e-3), jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    checkpointer = Checkpointer(str(tmp_path), metric="val_map",
                                config={"model": "small_cnn", "width": 8, "stages": 3, "num_attributes": 3,
                                        "image_size": 16})
    checkpointer.save(1, state, {"step": 1}, {"val_map": 1.0})
    checkpointer.close()
    config = explain.default_config()
    config.update(checkpoint=str(tmp_path / "nowhere"), query="a.png", reference="b.png", attributes=str(tmp_path))
    with pytest.raises(ValueError, match=f"thresholds file {tmp_path / 'thresholds.json'} not found"):
        explain.run(config, str(tmp_path / "out"))
    _, variables, _ = load_attribute_predictor(str(tmp_path))  # the folder itself is a loadable predictor
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), state.variables(), variables)


def test_map_match_equals_a_float64_loop():
    """Selection's match term: the saliency map standardised and softmaxed as Eq. 2's targets, its
    cosine with each attribute's spatial softmax (written out in float64 here)."""
    from simexplain_jax.attributes.select import map_match

    rng = np.random.default_rng(3)
    saliency = 500.0 + 5.0 * rng.normal(size=(4, 4))  # RISE-like: a large offset, small variations
    aams = 3.0 * rng.normal(size=(4, 4, 5))
    z = (saliency - saliency.mean()) / (saliency.std() + 1e-6)
    target = np.exp(z.ravel() - z.max()) / np.exp(z.ravel() - z.max()).sum()
    expected = []
    for a in range(5):
        e = np.exp(aams[..., a].ravel() - aams[..., a].max())
        h = e / e.sum()
        expected.append(h @ target / (np.linalg.norm(h) * np.linalg.norm(target)))
    np.testing.assert_allclose(map_match(saliency, aams), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="same grid"):
        map_match(saliency[:3], aams)
