"""Nothing lost: training that diverges or collapses never saves, checkpoints that cannot be trusted
are refused, and a refused run changes nothing on disk."""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simexplain_jax.checkpoint import Checkpointer, CorruptCheckpointError
from simexplain_jax.models import EmbeddingNet, SmallCNN
from simexplain_jax.models import loading
from simexplain_jax.train import similarity as sim
from simexplain_jax.train.loop import fit


def tree_bytes(folder):
    """Every file under ``folder`` with the SHA-256 of its bytes (and every folder)."""
    return sorted((str(p.relative_to(folder)), hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
                  for p in folder.rglob("*"))


def tiny_state():
    model = EmbeddingNet(SmallCNN(features=(4,)), dim=4)
    state = sim.create_train_state(model, sim.make_optimizer(1e-2), jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    return model, state


def test_a_non_finite_loss_stops_training_naming_the_step(tmp_path):
    """``learning_rate=nan`` used to exit 0 and save an all-NaN model as the best one."""
    import optax

    state = sim.TrainState.create(apply_fn=None, params={"w": jnp.zeros(3)}, tx=optax.sgd(0.1), batch_stats={})
    state = state.replace(step=jnp.zeros((), jnp.int32))

    @jax.jit
    def diverging(state, batch):  # the loss (and the parameters) turn NaN at step 3
        bad = state.step + 1 >= 3
        new = state.apply_gradients(grads={"w": jnp.where(bad, jnp.nan, batch)})
        return new, {"loss": jnp.where(bad, jnp.nan, 1.0 / (state.step + 1))}

    checkpointer = Checkpointer(str(tmp_path), metric="val_auc")
    evaluate = lambda s: {"val_auc": float(-jnp.abs(s.params["w"]).sum())}  # noqa: E731  (NaN would win nothing)
    with pytest.raises(FloatingPointError, match="NaN or infinite at step 3"):
        fit(state, diverging, iter(lambda: jnp.ones(3), None), num_steps=6, checkpointer=checkpointer,
            evaluate=evaluate, eval_every=2, checkpoint_every=1)
    assert checkpointer.latest_step() == 2 and checkpointer.best_step() == 2  # nothing trained through step 3 saved
    checkpointer.close()
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0, got nan"):
        sim.make_optimizer(float("nan"))
    with pytest.raises(ValueError, match="margin must be a finite number >= 0"):
        sim.make_train_step(EmbeddingNet(SmallCNN(features=(4,)), dim=4), margin=-0.1)


def test_nan_parameters_under_a_finite_loss_stop_training_naming_the_step(tmp_path):
    """``learning_rate=1e30`` left 12 of 17 parameter arrays NaN while the loss sat at the margin (normalised
    NaN embeddings give a constant loss): the run exited 0 and saved the NaN model as the best one."""
    import optax

    state = sim.TrainState.create(apply_fn=None, params={"w": jnp.zeros(3)}, tx=optax.sgd(0.1), batch_stats={})
    state = state.replace(step=jnp.zeros((), jnp.int32))

    @jax.jit
    def silent(state, batch):  # the parameters turn NaN at step 3, the loss stays 0.2
        bad = state.step + 1 >= 3
        return state.apply_gradients(grads={"w": jnp.where(bad, jnp.nan, batch)}), {"loss": jnp.float32(0.2)}

    checkpointer = Checkpointer(str(tmp_path), metric="val_auc")
    with pytest.raises(FloatingPointError, match="parameters are NaN or infinite at step 3"):
        fit(state, silent, iter(lambda: jnp.ones(3), None), num_steps=6, checkpointer=checkpointer,
            evaluate=lambda s: {"val_auc": 0.5}, eval_every=2, checkpoint_every=1)
    assert checkpointer.latest_step() == 2 and checkpointer.best_step() == 2
    checkpointer.close()


def test_diverged_or_collapsed_embeddings_fail_the_evaluation_naming_the_step(tmp_path):
    import optax

    embeddings = np.random.default_rng(0).normal(size=(5, 4))
    sim.check_embeddings(embeddings)  # a working model passes
    with pytest.raises(FloatingPointError, match="NaN or infinite embeddings \\(1 of 5 images\\)"):
        sim.check_embeddings(np.where(np.arange(5)[:, None] == 2, np.nan, embeddings))
    with pytest.raises(FloatingPointError, match="collapsed: all 5 images get the same embedding"):
        sim.check_embeddings(np.tile(embeddings[:1], (5, 1)))
    state = sim.TrainState.create(apply_fn=None, params={"w": jnp.zeros(3)}, tx=optax.sgd(0.1), batch_stats={})
    state = state.replace(step=jnp.zeros((), jnp.int32))
    step = jax.jit(lambda s, b: (s.apply_gradients(grads={"w": b}), {"loss": jnp.float32(1.0)}))

    def collapsed(s):
        sim.check_embeddings(np.ones((4, 2)))
        return {"val_auc": 0.5}

    checkpointer = Checkpointer(str(tmp_path), metric="val_auc")
    with pytest.raises(FloatingPointError, match="step 2: the model has collapsed.*last good checkpoint"):
        fit(state, step, iter(lambda: jnp.ones(3), None), num_steps=4, checkpointer=checkpointer, evaluate=collapsed,
            eval_every=2, checkpoint_every=1)
    assert checkpointer.latest_step() == 1 and checkpointer.best_step() is None
    checkpointer.close()


def saved_tiny_checkpoint(directory):
    model, state = tiny_state()
    config = {"image_size": 8, "model": "small_cnn", "embedding_dim": 4}
    checkpointer = Checkpointer(str(directory), metric="val_auc", config=config)
    checkpointer.save(1, state, {"step": 1}, {"val_auc": 0.5})
    checkpointer.close()
    return model, state


def test_a_corrupt_checkpoint_is_reported_by_path(tmp_path):
    model, state = saved_tiny_checkpoint(tmp_path)
    restored = loading.restore_variables(str(tmp_path), model, 8)
    jax.tree.map(np.testing.assert_array_equal, restored, state.variables())
    data_file = max((p for p in (tmp_path / "1" / "variables").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(data_file.read_bytes())
    raw[-200:-136] = bytes(b ^ 0xFF for b in raw[-200:-136])  # 64 flipped bytes: loaded silently before
    data_file.write_bytes(bytes(raw))
    relative = os.path.relpath(data_file, tmp_path / "1")
    with pytest.raises(CorruptCheckpointError, match=f"checkpoint {tmp_path / '1'} is corrupt: {relative} differs"):
        loading.restore_variables(str(tmp_path), model, 8)


def test_the_integrity_helper_names_the_first_file_that_differs(tmp_path):
    from simexplain_jax import integrity

    folder = tmp_path / "files"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "x.bin").write_bytes(b"\x00" * 10)
    (folder / "y.txt").write_text("y")
    written = integrity.write_digests(tmp_path / "digests.json", folder)
    assert integrity.read_digests(tmp_path / "digests.json") == written and len(written) == 2
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary file left
    assert integrity.first_difference(folder, written) is None
    (folder / "a" / "x.bin").write_bytes(b"\x00" * 9 + b"\x01")  # one flipped bit
    assert integrity.first_difference(folder, written) == (os.path.join("a", "x.bin"),
                                                           "differs from the digest saved with it")
    assert integrity.first_difference(folder, written, within=("y.txt",)) is None
    (folder / "y.txt").unlink()
    assert integrity.first_difference(folder, written, within=("y.txt",)) == ("y.txt", "is missing")
    assert integrity.read_digests(tmp_path / "absent.json") is None
    (tmp_path / "digests.json").write_text("{not json")
    with pytest.raises(integrity.CorruptFileError, match="digests.json is unreadable"):
        integrity.read_digests(tmp_path / "digests.json")


def test_an_unreadable_digest_file_is_reported_by_path(tmp_path):
    model, _ = saved_tiny_checkpoint(tmp_path)
    (tmp_path / "digests" / "1.json").write_text("{not json")
    with pytest.raises(CorruptCheckpointError, match=f"checkpoint {tmp_path / '1'}: its digest file "
                                                     f"{tmp_path / 'digests' / '1.json'} is unreadable"):
        loading.restore_variables(str(tmp_path), model, 8)


def test_an_edited_config_json_is_detected_on_load(tmp_path):
    model, _ = saved_tiny_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, image_size=48)))
    with pytest.raises(ValueError, match="config.json differs from the config checkpoint 1 was trained with: "
                                         "image_size: 8 when trained, 48 in config.json"):
        loading.restore_variables(str(tmp_path), model, 48)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not a readable JSON config"):
        loading.load_trained(str(tmp_path))


def test_resuming_under_another_config_is_refused_and_changes_nothing(tmp_path):
    """A rerun with another config used to overwrite config.json before being refused, so the
    trained model could no longer be loaded."""
    model, state = saved_tiny_checkpoint(tmp_path)
    before = tree_bytes(tmp_path)
    with pytest.raises(ValueError, match="trained with another config.*embedding_dim: 4 when trained, 8 now"):
        Checkpointer(str(tmp_path), metric="val_auc",
                     config={"image_size": 8, "model": "small_cnn", "embedding_dim": 8})
    with pytest.raises(ValueError, match="chosen by 'val_auc' \\(max\\); this run asks for 'val_map'"):
        Checkpointer(str(tmp_path), metric="val_map", config={"image_size": 8, "model": "small_cnn",
                                                               "embedding_dim": 4})
    assert tree_bytes(tmp_path) == before
    restored = loading.restore_variables(str(tmp_path), model, 8)  # still loads
    jax.tree.map(np.testing.assert_array_equal, restored, state.variables())
    again = Checkpointer(str(tmp_path), metric="val_auc", config={"image_size": 8, "model": "small_cnn",
                                                                   "embedding_dim": 4})  # the same config resumes
    assert again.latest_step() == 1
    again.close()


def test_a_step_without_its_digests_is_refused(tmp_path):
    """A flipped byte in a checkpoint whose digest file was missing loaded without a word."""
    model, _ = saved_tiny_checkpoint(tmp_path)
    (tmp_path / "digests" / "1.json").unlink()
    data_file = max((p for p in (tmp_path / "1" / "variables").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(data_file.read_bytes())
    raw[-200] ^= 0xFF
    data_file.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError, match=f"checkpoint {tmp_path / '1'} has no digest file"):
        loading.restore_variables(str(tmp_path), model, 8)
    assert json.loads((tmp_path / "checkpointer.json").read_text())["format"] == 2


def test_folders_of_the_earlier_format_still_load_without_digests(tmp_path):
    model, state = saved_tiny_checkpoint(tmp_path)
    (tmp_path / "digests" / "1.json").unlink()
    (tmp_path / "checkpointer.json").write_text(json.dumps({"metric": "val_auc", "mode": "max"}))  # no format
    restored = loading.restore_variables(str(tmp_path), model, 8)
    jax.tree.map(np.testing.assert_array_equal, restored, state.variables())
