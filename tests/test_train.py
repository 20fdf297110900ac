import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simexplain_jax.checkpoint import Checkpointer
from simexplain_jax.data.pipeline import Preprocess, make_loader
from simexplain_jax.data.sources import InMemorySource
from simexplain_jax.metrics.verification import roc_auc
from simexplain_jax.models import EmbeddingNet, SmallCNN, TypeAwareEmbedding
from simexplain_jax.train import similarity as sim
from simexplain_jax.train.loop import fit
from simexplain_jax.train.triplet import euclidean_distances, label_masks, triplet_loss


def naive_triplet(e, labels, margin, mining):
    d = np.linalg.norm(e[:, None] - e[None], axis=-1)
    n = len(labels)
    losses = []
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [k for k in range(n) if labels[k] != labels[a]]
        if not pos or not neg:
            continue
        if mining == "hard":
            losses.append(max(max(d[a, pos]) - min(d[a, neg]) + margin, 0))
            continue
        for p in pos:
            if mining == "all":
                losses += [max(d[a, p] - d[a, k] + margin, 0) for k in neg]
            else:
                outside = [d[a, k] for k in neg if d[a, k] > d[a, p]]
                chosen = min(outside) if outside else max(d[a, neg])
                losses.append(max(d[a, p] - chosen + margin, 0))
    return np.mean(losses), np.mean(np.array(losses) > 0)


@pytest.mark.parametrize("mining", ["semi_hard", "hard", "all"])
def test_triplet_loss_equals_naive_loops(mining):
    rng = np.random.default_rng(0)
    e = rng.normal(size=(12, 4))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    labels = rng.integers(0, 3, 12)
    positive, negative = label_masks(jnp.asarray(labels))
    loss, active = triplet_loss(euclidean_distances(jnp.asarray(e), jnp.asarray(e)), positive, negative, 0.2, mining)
    expected_loss, expected_active = naive_triplet(e, labels, 0.2, mining)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-4)
    np.testing.assert_allclose(active, expected_active, rtol=1e-5)


def test_triplet_loss_is_zero_for_separated_classes():
    e = jnp.array([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])
    positive, negative = label_masks(jnp.array([0, 0, 1, 1]))
    loss, active = triplet_loss(euclidean_distances(e, e), positive, negative, 0.2, "semi_hard")
    assert float(loss) == 0.0 and float(active) == 0.0
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(euclidean_distances(e, e), positive, negative, 0.2, "easy")


def test_roc_auc_equals_pair_counting():
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=60), 1)  # ties included
    labels = rng.integers(0, 2, 60)
    pos, neg = scores[labels == 1], scores[labels == 0]
    expected = np.mean([(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)])
    assert roc_auc(scores, labels) == pytest.approx(expected)
    with pytest.raises(ValueError, match="positive"):
        roc_auc([0.1, 0.2], [1, 1])


def small_setup(batch_size=16):
    model = EmbeddingNet(SmallCNN(features=(8, 16, 16)), dim=8)
    optimizer = sim.make_optimizer(1e-2, 0.9, 10)
    sample = jnp.zeros((1, 16, 16, 3))
    state = sim.create_train_state(model, optimizer, jax.random.key(0), sample)
    return model, optimizer, state


def fixed_batch():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 4)
    centers = rng.normal(size=(4, 16, 16, 3))
    images = centers[labels] + 0.8 * rng.normal(size=(16, 16, 16, 3))
    return {"image": jnp.asarray(images, jnp.float32), "label": jnp.asarray(labels)}


def test_triplet_steps_lower_the_loss_and_update_batch_norm():
    model, optimizer, state = small_setup()
    step = sim.make_train_step(model, optimizer, batch_kind="labels")
    batch = fixed_batch()
    first_stats = jax.tree.map(np.asarray, state.batch_stats)
    losses = []
    for _ in range(15):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0]
    assert int(state.step) == 15
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - np.asarray(b)).max()), first_stats,
                                         state.batch_stats))
    assert max(moved) > 0


def test_type_aware_outfit_step_lowers_the_loss():
    model = TypeAwareEmbedding(SmallCNN(features=(8, 16, 16)), num_conditions=3, dim=8)
    optimizer = sim.make_optimizer(1e-2)
    state = sim.create_train_state(model, optimizer, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    rng = np.random.default_rng(0)
    batch = {"anchor": jnp.asarray(rng.normal(size=(12, 16, 16, 3)), jnp.float32),
             "positive": jnp.asarray(rng.normal(size=(12, 16, 16, 3)), jnp.float32),
             "condition": jnp.asarray(rng.integers(0, 3, 12)), "category": jnp.asarray(rng.integers(0, 2, 12)),
             "outfit": jnp.arange(12)}
    step = sim.make_train_step(model, optimizer, batch_kind="outfits")
    losses = []
    for _ in range(10):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="TypeAwareEmbedding"):
        sim.make_train_step(EmbeddingNet(SmallCNN()), optimizer, batch_kind="outfits")


def run_fit(directory, num_steps):
    model, optimizer, state = small_setup()
    rng = np.random.default_rng(0)
    source = InMemorySource({"image": rng.integers(0, 255, (64, 16, 16, 3), dtype=np.uint8),
                             "label": np.repeat(np.arange(4), 16)})
    iterator = iter(make_loader(source, batch_size=16, preprocess=Preprocess(keys=("label",)), seed=0,
                                num_epochs=None, drop_remainder=True, shard_index=0, shard_count=1))
    checkpointer = Checkpointer(str(directory), config={"test": True})
    evaluate = lambda s: {"val_auc": float(-sim.jnp.abs(jax.tree.leaves(s.params)[0]).mean())}  # noqa: E731
    state, history = fit(state, sim.make_train_step(model, optimizer), iterator, num_steps=num_steps,
                         checkpointer=checkpointer, evaluate=evaluate, eval_every=2, checkpoint_every=3,
                         best_metric="val_auc")
    checkpointer.close()
    return state, history


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    uninterrupted, _ = run_fit(tmp_path / "a", 7)
    run_fit(tmp_path / "b", 3)  # "killed" after its checkpoint at step 3
    resumed, history = run_fit(tmp_path / "b", 7)
    assert int(resumed.step) == 7 and [h["step"] for h in history] == [4, 6, 7]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 (uninterrupted.params, uninterrupted.batch_stats, uninterrupted.opt_state),
                 (resumed.params, resumed.batch_stats, resumed.opt_state))
    assert (tmp_path / "b" / "config.json").exists()
    assert sorted(p.name for p in (tmp_path / "b" / "last").iterdir() if p.name.isdigit()) == ["7"]
    assert len([p for p in (tmp_path / "b" / "best").iterdir() if p.name.isdigit()]) == 1


def test_checkpointer_remembers_its_metric(tmp_path):
    from simexplain_jax.checkpoint import Checkpointer

    _, _, state = small_setup()
    writer = Checkpointer(str(tmp_path), metric="val_map", config={"x": 1})
    writer.save_best(1, state, {"step": 1}, {"val_map": 0.5})
    writer.close()
    reader = Checkpointer(str(tmp_path))  # reopened without naming the metric
    assert reader.metric == "val_map" and reader.best_step() == 1
    reader.close()
