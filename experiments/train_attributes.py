"""Train the attribute predictor with lambda = 0 and lambda > 0 (Eq. 2) from the same seed.

    python -m experiments.train_attributes --config=experiments/configs/attributes_shapes.py:runlocal --workdir=DIR

Stages: the similarity model (``similarity_workdir``, trained first when absent, or a model of your
own: ``similarity_model``, see ``experiments.similarity_source``), the training
saliency cache (``<workdir>/saliency_cache``, resumable shards), then one run per lambda
(``<workdir>/lambda_<value>/checkpoints``, best by validation mAP). ``results.json``:
``{"runs": [{"lambda", "test_map", "val_map", "best_epoch", "checkpoint_dir"}], "seed", ...}``
with mAP x 100.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from experiments import similarity_source, validation
from experiments.stages import flags_main
from experiments.workdir_lock import WorkdirLock
from simexplain_jax.attributes.saliency_cache import training_saliency
from simexplain_jax import parallel
from simexplain_jax.checkpoint import Checkpointer
from simexplain_jax.data.pairs import groups_from_labels, positive_references
from simexplain_jax.data.pipeline import Preprocess, make_loader
from simexplain_jax.data.sources import InMemorySource
from simexplain_jax.imageops import normalize_images
from simexplain_jax.io import write_json_atomic
from simexplain_jax.models.attributes import AttributePredictor
from simexplain_jax.models.factory import backbone
from simexplain_jax.train import similarity as sim
from simexplain_jax.train.attributes import (CONCEPTS_FILE, THRESHOLDS_FILE, evaluate_map, make_attribute_step,
                                             predict)
from simexplain_jax.attributes import Thresholds, fit_concepts, save_concepts
from simexplain_jax.engine import apply_in_chunks
from simexplain_jax.data.datasets import attribute_names as dataset_attribute_names
from simexplain_jax.data.datasets import attribute_splits
from simexplain_jax.train.loop import fit

CONCEPT_RIDGE = 1e-2  # the concept fit's ridge penalty (explain_attributes' default)
CONCEPT_METHOD = "pattern"  # the concept fit (explain_attributes' first, chosen on validation pairs)


def predictor_config(config, attribute_names: list, image_size: int) -> dict:
    return {"model": config.model, "width": config.width, "stages": config.stages,
            "num_attributes": len(attribute_names), "attribute_names": attribute_names, "image_size": image_size,
            "learning_rate": config.learning_rate, "lr_decay_rate": config.lr_decay_rate}


def run(config, workdir: str) -> dict:
    """Checks ``config`` (before any training or data build), then trains under the workdir's lock;
    returns the results written to ``<workdir>/results.json``."""
    lambdas = validation.check_attributes_config(config)
    with WorkdirLock(workdir):  # one run per workdir
        return train(config, workdir, lambdas)


def train(config, workdir: str, lambdas: list) -> dict:
    start_time = time.perf_counter()
    data_dir = config.data_dir or os.path.join(workdir, "tfds")
    dataset, record = similarity_source.prepare(config, workdir, data_dir)
    splits = attribute_splits(dataset, data_dir=data_dir, manual_dir=config.manual_dir)
    train = splits["train"]
    images = normalize_images(train.images)
    sim_model = similarity_source.load(record, images.shape[1])
    num_attributes = train.attributes.shape[1]
    attribute_names = dataset_attribute_names(dataset, data_dir=data_dir, manual_dir=config.manual_dir)

    # the training saliency cache (query-major through explain_pairs), for the first cache_images images
    references = positive_references(groups_from_labels(train.groups.tolist()), len(images), config.max_references,
                                     seed=config.seed)
    cached = min(config.cache_images, len(images))
    probe = AttributePredictor(backbone(config.model, width=config.width, stages=config.stages), num_attributes)
    grid = jax.eval_shape(probe.init_with_output, jax.random.key(0), jnp.zeros((1, *images.shape[1:])))[0][1].shape[1]
    bar = tqdm(total=cached, desc="training saliency", unit="image")
    maps, valid = training_saliency(config.saliency_method, sim_model.embed, images,
                                    references[:cached], key=jax.random.key(config.seed),
                                    config=config.saliency.to_dict(), grid=grid, max_references=config.max_references,
                                    directory=os.path.join(workdir, "saliency_cache"), shard_size=config.shard_size,
                                    progress=bar.update)
    bar.close()
    full_maps = np.zeros((len(images), *maps.shape[1:]), np.float32)
    full_valid = np.zeros((len(images), maps.shape[1]), bool)
    full_maps[:cached], full_valid[:cached] = maps, valid
    source = InMemorySource({"image": train.images, "attributes": train.attributes, "saliency": full_maps,
                             "valid": full_valid})
    val_images = normalize_images(splits["validation"].images)
    test_images = normalize_images(splits["test"].images)
    # the similarity model's concept directions (for the concept selector of experiments.explain), from training images
    concepts = fit_concepts(apply_in_chunks(sim_model.embed, images), train.attributes, split="train",
                            ridge=CONCEPT_RIDGE, method=CONCEPT_METHOD, seed=config.seed)
    model_fingerprint = sim_model.fingerprint
    steps_per_epoch = max(len(images) // config.batch_size, 1)
    runs = []
    for lam in lambdas:
        predictor = AttributePredictor(backbone(config.model, width=config.width, stages=config.stages),
                                       num_attributes)
        optimizer = sim.make_optimizer(config.learning_rate, config.lr_decay_rate, steps_per_epoch)
        state = sim.create_train_state(predictor, optimizer, jax.random.key(config.seed),
                                       jnp.zeros((1, *images.shape[1:])))
        step = make_attribute_step(lam=lam, classification=config.classification,
                                   normalize=config.saliency_normalization)
        iterator = iter(make_loader(source, batch_size=config.batch_size,
                                    preprocess=Preprocess(keys=("attributes", "saliency", "valid")), seed=config.seed,
                                    num_epochs=None, drop_remainder=True))
        if config.mesh_devices > 1:  # data parallel: batches split over the mesh, the state replicated or fully sharded
            mesh = parallel.make_mesh(config.mesh_devices, local=True)
            state = parallel.place_state(state, mesh, config.param_sharding)
            step = parallel.data_parallel(step, mesh)
        checkpoint_dir = os.path.join(workdir, f"lambda_{lam:g}", "checkpoints")
        checkpointer = Checkpointer(checkpoint_dir, metric="val_map",
                                    config=dict(predictor_config(config, attribute_names, images.shape[1]),
                                                **{"lambda": lam, "steps_per_epoch": steps_per_epoch}))
        num_steps = config.num_epochs * steps_per_epoch
        bar = tqdm(total=num_steps, desc=f"attributes lambda={lam:g}", unit="step",
                   initial=checkpointer.latest_step() or 0)

        def on_step(i, metrics):
            bar.update(1)
            if i % 10 == 0:
                bar.set_postfix(cls=f"{float(metrics['classification']):.4f}", hm=f"{float(metrics['matching']):.3f}")

        evaluate = lambda s: {"val_map": 100 * evaluate_map(predictor, s.variables(), val_images,  # noqa: E731
                                                            splits["validation"].attributes)}
        state, history = fit(state, step, iterator, num_steps=num_steps, checkpointer=checkpointer,
                             evaluate=evaluate, eval_every=steps_per_epoch, checkpoint_every=steps_per_epoch,
                             on_step=on_step, patience=config.patience)
        bar.close()
        best_step = checkpointer.best_step()
        best = checkpointer.restore_variables(state.variables())
        checkpointer.close()
        # presence thresholds for users of this checkpoint (experiments.explain), from validation data only
        val_scores = predict(predictor, best, val_images)[0]
        thresholds = Thresholds.fit(val_scores, splits["validation"].attributes, split="validation")
        thresholds.save(os.path.join(checkpoint_dir, THRESHOLDS_FILE))
        save_concepts(os.path.join(checkpoint_dir, CONCEPTS_FILE), concepts, model=model_fingerprint, ridge=CONCEPT_RIDGE)
        runs.append({"lambda": lam,
                     "test_map": 100 * evaluate_map(predictor, best, test_images, splits["test"].attributes),
                     "val_map": 100 * evaluate_map(predictor, best, val_images,
                                                   splits["validation"].attributes),
                     "best_epoch": best_step // steps_per_epoch, "epochs": int(state.step) // steps_per_epoch,
                     "checkpoint_dir": checkpoint_dir, "history": history})
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "history"}), flush=True)
    results = {"runs": runs, "seed": config.seed, "dataset": dataset, **sim_model.record,
               "saliency_method": config.saliency_method, "num_cache_images": cached,
               "classification": config.classification, "saliency_normalization": config.saliency_normalization,
               "seconds": time.perf_counter() - start_time}
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    print("| lambda | test mAP | validation mAP | best epoch |\n|---|---|---|---|")
    for r in runs:
        print(f"| {r['lambda']:g} | {r['test_map']:.2f} | {r['val_map']:.2f} | {r['best_epoch']} |")
    return results


def main():
    flags_main(run, "experiments/configs/attributes_*.py")


if __name__ == "__main__":
    main()
