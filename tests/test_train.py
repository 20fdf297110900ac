import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simexplain_jax.checkpoint import Checkpointer
from simexplain_jax.models import loading
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
    step = sim.make_train_step(model, batch_kind="labels")
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
    step = sim.make_train_step(model, batch_kind="outfits")
    losses = []
    for _ in range(10):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="TypeAwareEmbedding"):
        sim.make_train_step(EmbeddingNet(SmallCNN()), batch_kind="outfits")


def run_fit(directory, num_steps):
    model, optimizer, state = small_setup()
    rng = np.random.default_rng(0)
    source = InMemorySource({"image": rng.integers(0, 255, (64, 16, 16, 3), dtype=np.uint8),
                             "label": np.repeat(np.arange(4), 16)})
    iterator = iter(make_loader(source, batch_size=16, preprocess=Preprocess(keys=("label",)), seed=0,
                                num_epochs=None, drop_remainder=True, shard_index=0, shard_count=1))
    checkpointer = Checkpointer(str(directory), metric="val_auc", config={"test": True})
    evaluate = lambda s: {"val_auc": float(-sim.jnp.abs(jax.tree.leaves(s.params)[0]).mean())}  # noqa: E731
    state, history = fit(state, sim.make_train_step(model), iterator, num_steps=num_steps,
                         checkpointer=checkpointer, evaluate=evaluate, eval_every=2, checkpoint_every=3)
    checkpointer.close()
    return state, history


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    uninterrupted, _ = run_fit(tmp_path / "a", 7)
    run_fit(tmp_path / "b", 3)  # "killed" after its checkpoint at step 3
    resumed, history = run_fit(tmp_path / "b", 7)
    # the whole history: the killed run's evaluations (2, and 3 where it ended) and the resumed run's
    assert int(resumed.step) == 7 and [h["step"] for h in history] == [2, 3, 4, 6, 7]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 (uninterrupted.step, uninterrupted.params, uninterrupted.batch_stats, uninterrupted.opt_state),
                 (resumed.step, resumed.params, resumed.batch_stats, resumed.opt_state))
    assert (tmp_path / "b" / "config.json").exists()
    reader = Checkpointer.open(str(tmp_path / "b"))
    kept = sorted(int(p.name) for p in (tmp_path / "b").iterdir() if p.name.isdigit())
    assert kept == sorted({7, reader.best_step()}) and reader.latest_step() == 7  # the latest and the best only
    reader.close()


def save_steps(directory, values, mode="max"):
    """Saves one tiny state per value (None: a save without metrics) and returns the checkpointer."""
    _, _, state = small_setup()
    checkpointer = Checkpointer(str(directory), metric="m", mode=mode)
    for step, value in enumerate(values, start=1):
        checkpointer.save(step, state, {"step": step}, None if value is None else {"m": value, "other": -value})
    return checkpointer


@pytest.mark.parametrize("mode,best", [("max", 2), ("min", 5)])
def test_one_manager_keeps_the_latest_and_the_best(tmp_path, mode, best):
    checkpointer = save_steps(tmp_path, [0.3, 0.9, None, 0.5, 0.1, None], mode)
    assert checkpointer.latest_step() == 6 and checkpointer.best_step() == best
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == sorted({best, 6})
    checkpointer.close()
    reopened = Checkpointer.open(str(tmp_path))  # reopened for reading: the stored metric and its mode
    assert (reopened.metric, reopened.mode, reopened.best_step()) == ("m", mode, best)
    reopened.close()


def test_checkpointer_errors_name_the_problem(tmp_path):
    _, _, state = small_setup()
    checkpointer = Checkpointer(str(tmp_path), metric="val_map")
    with pytest.raises(ValueError, match="val_map"):
        checkpointer.save(1, state, {"step": 1}, {"val_auc": 0.5})
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
        checkpointer.restore(state, which="best")
    checkpointer.save(1, state, {"step": 1})  # no metrics: a latest checkpoint, never a best one
    assert checkpointer.latest_step() == 1 and checkpointer.best_step() is None
    with pytest.raises(ValueError, match="which must be one of"):
        checkpointer.restore(state, which="first")
    checkpointer.close()
    with pytest.raises(ValueError, match="mode must be one of"):
        Checkpointer(str(tmp_path / "x"), metric="m", mode="highest")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'x'}/config.json not found"):
        loading.load_trained(str(tmp_path / "x"))


def test_the_metric_is_required_and_reading_creates_nothing(tmp_path):
    _, _, state = small_setup()
    with pytest.raises(TypeError, match="metric"):
        Checkpointer(str(tmp_path / "w"))  # no default metric
    with pytest.raises(ValueError, match="metric must name the metric"):
        Checkpointer(str(tmp_path / "w"), metric="")
    assert not (tmp_path / "w").exists()
    with pytest.raises(FileNotFoundError, match=f"checkpoint folder {tmp_path / 'missing'} does not exist"):
        Checkpointer.open(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        loading.load_trained(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="checkpointer.json not found"):
        Checkpointer.open(str(tmp_path / "empty"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"] and not any((tmp_path / "empty").iterdir())
    (tmp_path / "empty" / "checkpointer.json").write_text("{}")
    with pytest.raises(ValueError, match="checkpointer.json does not name the checkpoints' metric and mode"):
        Checkpointer.open(str(tmp_path / "empty"))
    (tmp_path / "empty" / "checkpointer.json").unlink()

    writer = Checkpointer(str(tmp_path / "run"), metric="val_auc", config={"image_size": 16})
    writer.save(1, state, {"step": 1}, {"val_auc": 0.5})
    writer.close()

    def listing():
        return sorted((str(p.relative_to(tmp_path)), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))

    before = listing()
    reader = Checkpointer.open(str(tmp_path / "run"))
    assert reader.read_only and reader.best_step() == 1 and reader.latest_step() == 1
    variables = reader.restore_variables(state.variables())
    restored, meta = reader.restore(state, which="best")
    with pytest.raises(ValueError, match="open for reading"):
        reader.save(2, state, {"step": 2})
    reader.close()
    assert listing() == before  # nothing created, written or touched
    jax.tree.map(np.testing.assert_array_equal, variables, state.variables())
    assert meta["step"] == 1 and int(restored.step) == int(state.step)


def test_variables_restore_without_any_optimizer(tmp_path, monkeypatch):
    model, optimizer, state = small_setup()
    step = sim.make_train_step(model)
    for _ in range(3):  # moved params, batch statistics and Adam moments
        state, _ = step(state, fixed_batch())
    checkpointer = Checkpointer(str(tmp_path), metric="val_auc")
    checkpointer.save(3, state, {"step": 3}, {"val_auc": 0.7})
    checkpointer.close()
    # the optimizer state is not read (its item removed) and no optimizer can be built
    [train_item] = list(tmp_path.glob("3/train"))
    for path in sorted(train_item.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    train_item.rmdir()
    monkeypatch.setattr(sim, "make_optimizer", lambda *a, **k: pytest.fail("built an optimizer"))
    monkeypatch.setattr(sim.optax, "adam", lambda *a, **k: pytest.fail("built an optimizer"))
    restored = loading.restore_variables(str(tmp_path), model, 16)
    assert set(restored) == {"params", "batch_stats"}
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), state.variables(), restored)
    assert all(isinstance(x, jax.Array) and x.dtype == jnp.float32 for x in jax.tree.leaves(restored))


def test_write_atomic_replaces_whole_files_or_leaves_them(tmp_path):
    from simexplain_jax.io import write_atomic, write_json_atomic

    path = tmp_path / "sub" / "x.npz"
    write_atomic(path, lambda f: np.savez(f, a=np.arange(3)))  # parent folder created
    with np.load(path) as data:
        assert data["a"].tolist() == [0, 1, 2]

    def fails(f):
        f.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        write_atomic(path, fails)
    with np.load(path) as data:  # the previous content, and no temporary file beside it
        assert data["a"].tolist() == [0, 1, 2]
    assert [p.name for p in path.parent.iterdir()] == ["x.npz"]
    write_atomic(tmp_path / "t.txt", "é")
    write_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "é" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    write_json_atomic(tmp_path / "j.json", {"b": 1, "a": [1.5]})
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": [1.5], "b": 1}
    with pytest.raises(TypeError, match="content must be"):
        write_atomic(tmp_path / "n", 3)


@pytest.mark.parametrize("values, mode, patience, expected", [
    ([0.5, 0.7, 0.6, 0.65], "max", 2, True), ([0.5, 0.7, 0.6, 0.71], "max", 2, False),
    ([0.5, 0.7, 0.7], "max", 1, True), ([0.5, 0.7, 0.6], "max", 0, False), ([0.5, 0.7], "max", 2, False),
    ([0.5, 0.3, 0.4, 0.35], "min", 2, True), ([0.5, 0.3, 0.4, 0.2], "min", 2, False)])
def test_stalled_counts_evaluations_without_improvement(values, mode, patience, expected):
    from simexplain_jax.train.loop import stalled

    history = [{"step": i, "m": v} for i, v in enumerate(values)]
    assert stalled(history, "m", mode, patience) is expected


def test_early_stopping_stops_after_patience_evaluations_and_a_resume_stops_there_too(tmp_path):
    rng = np.random.default_rng(0)
    source = InMemorySource({"image": rng.integers(0, 255, (64, 16, 16, 3), dtype=np.uint8),
                             "label": np.repeat(np.arange(4), 16)})
    scores = {2: 0.5, 4: 0.8, 6: 0.7, 8: 0.75, 10: 0.9, 12: 0.95}  # best at 4, then two evaluations without gain

    def run(num_steps, patience):
        model, _, state = small_setup()  # the step donates its state: a new one per run
        iterator = iter(make_loader(source, batch_size=16, preprocess=Preprocess(keys=("label",)), seed=0,
                                    num_epochs=None, drop_remainder=True, shard_index=0, shard_count=1))
        checkpointer = Checkpointer(str(tmp_path / f"p{patience}"), metric="val_auc", config={"test": True})
        out = fit(state, sim.make_train_step(model), iterator, num_steps=num_steps, checkpointer=checkpointer,
                  evaluate=lambda s: {"val_auc": scores[int(s.step)]}, eval_every=2, patience=patience)
        best = checkpointer.best_step()
        checkpointer.close()
        return out, best

    (stopped, history), best = run(12, patience=2)
    assert int(stopped.step) == 8 and [h["step"] for h in history] == [2, 4, 6, 8] and best == 4
    (again, history_again), _ = run(12, patience=2)  # rerun on the same folder: stopped already, no step taken
    assert int(again.step) == 8 and history_again == history
    (full, history_full), best_full = run(12, patience=0)  # no patience: every step, as before
    assert int(full.step) == 12 and best_full == 12 and len(history_full) == 6
