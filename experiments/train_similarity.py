"""Train a similarity model with a triplet loss; resumable; writes results.json.

    python -m experiments.train_similarity --config=experiments/configs/similarity_shapes.py:runlocal --workdir=DIR

Outputs in the workdir: ``checkpoints/`` (the latest step and the best by validation pair AUC,
``config.json``), ``results.json`` with ``test_pair_auc`` (of the best checkpoint),
``validation_pair_auc``, ``best_step``, ``steps``, ``seconds`` (this invocation's wall clock),
``checkpoint_dir``, ``history`` (validation AUC over steps), ``model`` and ``dataset``. With
``patience`` > 0 training stops once that many evaluations in a row have not improved the
validation AUC (``stopped_early``). Run the
same command again after an interruption: it resumes from the last checkpoint. A NaN or infinite
loss stops the run with an error naming the step (nothing trained through it is saved); one run
per workdir at a time (``<workdir>/.lock``).
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
from tqdm import tqdm

from experiments import validation
from experiments.stages import flags_main
from experiments.workdir_lock import WorkdirLock
from simexplain_jax import parallel
from simexplain_jax.checkpoint import Checkpointer
from simexplain_jax.data.pipeline import make_loader
from simexplain_jax.io import write_json_atomic
from simexplain_jax.models import load_torchvision_resnet
from simexplain_jax.models.factory import similarity_model
from simexplain_jax.train import similarity as sim
from simexplain_jax.data.datasets import similarity_data
from simexplain_jax.train.loop import fit

validate = validation.check_similarity_config  # fails at start, with a clear message, on a config that could not run


def run(config, workdir: str) -> dict:
    """Checks ``config``, then trains (resuming from ``<workdir>/checkpoints``) under the workdir's
    lock; returns the results written to ``<workdir>/results.json``."""
    validate(config)
    with WorkdirLock(workdir):  # one run per workdir
        return train(config, workdir)


def train(config, workdir: str) -> dict:
    start_time = time.perf_counter()
    data = similarity_data(config.dataset, data_dir=config.data_dir or os.path.join(workdir, "tfds"),
                           manual_dir=config.manual_dir, num_eval_pairs=config.num_eval_pairs, seed=config.seed,
                           test_pairs=config.test_pairs, progress=True)
    model = similarity_model(config, data.num_conditions)
    steps_per_epoch = max(len(data.train_source) // config.batch_size, 1)
    optimizer = sim.make_optimizer(config.learning_rate, config.lr_decay_rate,
                                   config.lr_decay_steps or steps_per_epoch)
    sample = jnp.zeros((1, data.image_size, data.image_size, 3))
    variables = model.init(jax.random.key(config.seed), sample)
    if config.init_weights:
        variables = load_torchvision_resnet(variables, config.init_weights, prefix=("backbone",))
    state = sim.create_train_state(model, optimizer, None, sample, variables=variables)
    train_step = sim.make_train_step(model, margin=config.margin, mining=config.mining, batch_kind=data.batch_kind)
    loader = make_loader(data.train_source, batch_size=config.batch_size, preprocess=data.preprocess,
                         seed=config.seed, num_epochs=None, drop_remainder=True)
    iterator = iter(loader)
    if config.mesh_devices > 1:  # data parallel: batches split over the mesh, the state replicated or fully sharded
        mesh = parallel.make_mesh(config.mesh_devices, local=True)
        state = parallel.place_state(state, mesh, config.param_sharding)
        train_step = parallel.data_parallel(train_step, mesh)
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    # patience says when to stop, not what a step computes: a run may resume under another one
    saved_config = dict({k: v for k, v in config.to_dict().items() if k != "patience"},
                        num_conditions=data.num_conditions, image_size=data.image_size, steps_per_epoch=steps_per_epoch)
    checkpointer = Checkpointer(checkpoint_dir, metric="val_auc", config=saved_config)

    def evaluate(state):
        return {"val_auc": sim.evaluate_pairs(model, state.variables(), data.validation)}

    bar = tqdm(total=config.num_steps, desc="train", unit="step", initial=checkpointer.latest_step() or 0)

    def on_step(step, metrics):
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{float(metrics['loss']):.4f}", active=f"{float(metrics['fraction_active']):.2f}")

    state, history = fit(state, train_step, iterator, num_steps=config.num_steps, checkpointer=checkpointer,
                         evaluate=evaluate, eval_every=config.eval_every, checkpoint_every=config.checkpoint_every,
                         on_step=on_step, patience=config.patience)
    bar.close()
    best_step = checkpointer.best_step()
    best = checkpointer.restore_variables(state.variables()) if best_step is not None else state.variables()
    results = {
        "dataset": config.dataset,
        "model": config.model,
        "test_pair_auc": sim.evaluate_pairs(model, best, data.test),
        "validation_pair_auc": sim.evaluate_pairs(model, best, data.validation),
        "best_step": best_step,
        "steps": int(state.step),
        "stopped_early": int(state.step) < config.num_steps,
        "seconds": time.perf_counter() - start_time,
        "checkpoint_dir": checkpoint_dir,
        "num_test_pairs": int(len(data.test.labels)),
        "history": history,
    }
    checkpointer.close()
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    print(json.dumps({k: v for k, v in results.items() if k != "history"}))
    print(f"test pair AUC {results['test_pair_auc']:.4f} (best step {best_step}), {results['seconds']:.0f} s; "
          f"{os.path.join(workdir, 'results.json')}")
    return results


def main():
    flags_main(run, "experiments/configs/similarity_*.py")


if __name__ == "__main__":
    main()
