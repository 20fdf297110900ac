"""Saliency evaluation (the paper's Table 1): every method x {fixed, variable} reference, plus
random, scored by insertion and deletion AUC (x100) and, on the shapes benchmark, by the pointing
game and the saliency mass on the key object (positive pairs).

    python -m experiments.saliency_eval --config=experiments/configs/saliency_shapes.py:runlocal --workdir=DIR

The similarity model is the one trained in ``similarity_workdir`` (trained there first when absent)
or a model of your own, ``--config.similarity_model.factory=package.module:factory`` or
``--config.similarity_model.torchvision_weights=FILE`` (``experiments.similarity_source``).

Maps are cached per method under ``<workdir>/cache`` (one file per query, recording the model,
key, options, dataset and split; a cache made with anything else raises, or with
``--config.replace_stale_cache=True`` is moved aside), and every finished row is recorded under
``<workdir>/rows``, so a killed run resumes where it stopped and a rerun of a finished one does no
work. A rerun with fewer ``rows`` merges into ``results.json`` (rows of the same model, pairs and
protocol are kept). One run per workdir at a time (``<workdir>/.lock``).

Writes ``results.json`` (``rows``: method, reference, insertion_auc, deletion_auc,
pointing_accuracy, mass_on_key, seconds_per_pair; ``num_pairs``, ``num_positive``, ...),
``results.md``, ``curves.png`` (mean insertion/deletion curves) and ``gallery.png``.
"""

from __future__ import annotations

import json
import os
import time
import zipfile

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

import simexplain_jax as sx
from simexplain_jax import parallel, viz
from simexplain_jax.data import shards
from simexplain_jax.io import write_atomic, write_json_atomic
from simexplain_jax.saliency.cache import describe, differences, fingerprint
from simexplain_jax.data.preprocess import normalized_color
from simexplain_jax.engine import apply_in_chunks
from simexplain_jax.data.datasets import explanation_pair_list, read_images
from experiments import similarity_source, validation
from experiments.tables import markdown_table
from experiments.stages import flags_main
from experiments.workdir_lock import LOCK_FILE, WorkdirLock

ROWS_DIR = "rows"
parse_rows = validation.parse_rows


def _row_record(workdir: str, name: str) -> str:
    return os.path.join(workdir, ROWS_DIR, f"{name}.npz")


def write_row_record(workdir: str, name: str, identity: dict, row: dict, curves, gallery) -> None:
    """A finished row (its results, mean curves and gallery maps) with what it was computed from."""
    arrays = {"identity": np.asarray(json.dumps(identity, sort_keys=True)), "row": np.asarray(json.dumps(row)),
              "curves": np.asarray(curves, np.float32), "gallery": np.asarray(gallery, np.float32)}
    write_atomic(_row_record(workdir, name), lambda f: np.savez(f, **arrays))


def read_row_record(workdir: str, name: str):
    """``(identity, row, curves [2, S], gallery [G, H, W])`` or None (absent or unreadable)."""
    path = _row_record(workdir, name)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return (json.loads(str(data["identity"])), json.loads(str(data["row"])), data["curves"],
                    data["gallery"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        logging.warning("row record %s is unreadable (%s): recomputing that row", path, err)
        return None


def merged_rows(workdir: str, names: list, evaluation: dict) -> list:
    """The rows to report: those of earlier runs on this workdir (in their order) and this run's,
    each from its record; a record made with another model, pair list or protocol is left out."""
    order = []
    try:
        with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
            earlier = json.load(f)["rows"]
        order = [r["method"] if r["reference"] == "fixed" else f"{r['method']}_{r['reference']}" for r in earlier]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    order += [n for n in names if n not in order]
    out = []
    for name in order:
        record = read_row_record(workdir, name)
        if record is None:
            continue
        identity = {k: v for k, v in record[0].items() if k in evaluation}
        if identity != evaluation:
            logging.warning("leaving out row %s of an earlier run: it was computed with other settings (%s)", name,
                            "; ".join(differences(identity, evaluation)))
            continue
        out.append((name, *record[1:]))
    return out


def run(config, workdir: str):
    """Checks ``config``, joins the distributed runtime when it names one, then evaluates under the
    workdir's lock (each process its own lock file); returns the summary written to
    ``<workdir>/results.json`` (None on processes other than 0, which write nothing)."""
    rows = validation.check_saliency_config(config)  # everything checked before any training or data build
    distributed = config.distributed  # one command per host; see the README's "Many devices and hosts"
    if distributed.coordinator_address == "auto":  # a TPU pod, SLURM, ...: JAX finds the rest
        parallel.initialize_distributed("auto")
    elif distributed.num_processes > 1:
        parallel.initialize_distributed(distributed.coordinator_address, distributed.num_processes,
                                        distributed.process_id)
    index = jax.process_index()
    with WorkdirLock(workdir, LOCK_FILE if index == 0 else f"{LOCK_FILE}.{index}"):  # one run per workdir
        return evaluate(config, workdir, rows)


def evaluate(config, workdir: str, rows: list):
    # each process reads and explains only its share of the pairs (whole query groups); every pair's
    # curves and scores are then gathered on every process, and process 0 writes the results
    mesh = parallel.make_mesh(config.mesh_devices or None, local=True, masks=config.mesh_masks)
    mesh = mesh if mesh.devices.size > 1 else None
    os.makedirs(workdir, exist_ok=True)
    data_dir = config.data_dir or os.path.join(workdir, "tfds")

    def prepare():  # the similarity model (trained if missing) and the pair list (the dataset built if missing)
        dataset, record = similarity_source.prepare(config, workdir, data_dir)
        return record, explanation_pair_list(dataset, data_dir=data_dir, manual_dir=config.manual_dir,
                                              split=config.split, num_pairs=config.num_pairs, seed=config.seed,
                                              test_pairs=config.test_pairs)

    # process 0 trains / builds what is missing first; the others then find it done (shared folders)
    if jax.process_index() == 0:
        record, listed = prepare()
    if jax.process_count() > 1:
        from orbax.checkpoint import multihost

        # a barrier of the coordination service, which waits while process 0 builds (a collective
        # such as sync_global_devices fails when gloo's context is not made within 30 s)
        multihost.sync_global_processes("saliency_eval_model_and_dataset_ready", timeout=24 * 3600,
                                        processes=set(range(jax.process_count())))
        if jax.process_index() != 0:
            record, listed = prepare()
    num_pairs = len(listed.pairs)
    # this process's share of the pairs (every pair in a one-process run), read through grain
    key_masks = "key_mask" in listed.query_keys
    shard = shards.read_pair_shard(listed.source, listed.source, listed.pairs, preprocess=listed.preprocess,
                                   query_keys=("key_mask",) if key_masks else ())
    pairs = shard.pairs  # rows of shard.queries / shard.references
    # every process together (orbax synchronises the processes while restoring a trained model)
    sim = similarity_source.load(record, shard.image_shape[0])
    dataset = sim.dataset
    all_conditions = listed.conditions if listed.conditions is not None else np.full(num_pairs, -1)
    conditions = all_conditions[shard.positions]
    positive = listed.labels[shard.positions] == 1
    positives = np.flatnonzero(listed.labels == 1)
    shown = positives[: config.gallery_pairs] if len(positives) else np.arange(min(config.gallery_pairs, num_pairs))
    in_gallery = np.flatnonzero(np.isin(shard.positions, shown))
    background = normalized_color(config.background)
    key = jax.random.key(config.seed)
    main_process = jax.process_index() == 0
    model_id = sim.cache_id  # caches and rows of another model are never reused
    # what every row depends on besides its method: a row record or cache made with anything else is not reused
    evaluation = {"dataset": dataset, "split": config.split, "model": model_id,
                  "pairs": fingerprint([np.asarray(listed.pairs), np.asarray(listed.labels), all_conditions]),
                  "background": describe(config.background), "insertion_steps": config.insertion_steps,
                  "gallery": shown.tolist(), "seed": config.seed}
    evaluation = json.loads(json.dumps(evaluation, sort_keys=True))
    # cache files are named by the query's index in this split: record which split that is
    cache_meta = {"ids": "dataset index", "dataset": dataset, "split": config.split, "model": model_id}
    # a finished row is reused as it is (one process; several always recompute, from the map caches)
    reuse_rows = jax.process_count() == 1

    for method, reference, name in rows:
        options = sx.saliency.options_for(name, **validation.method_config(config, name))
        identity = dict(evaluation, method=name, options=options.to_dict())
        record = read_row_record(workdir, name) if reuse_rows else None
        if record is not None and record[0] == json.loads(json.dumps(identity, sort_keys=True)):
            if main_process:
                print(json.dumps(record[1]), flush=True)
            continue
        maps = np.zeros((len(pairs), *shard.image_shape[:2]), np.float32)
        bar = tqdm(total=len(pairs), desc=f"{method}/{reference}", unit="pair", leave=False, disable=not main_process)
        start = time.perf_counter()
        for condition in np.unique(conditions):
            chosen = np.flatnonzero(conditions == condition)
            cache_dir = os.path.join(workdir, "cache", name if condition < 0 else f"{name}_c{condition}")
            maps[chosen] = sx.saliency.explain_pairs(options, sim.embed_for(condition), shard.queries, shard.references,
                                                     key=key, pairs=pairs[chosen], progress=bar.update,
                                                     cache_dir=cache_dir, mesh=mesh, query_ids=shard.query_ids,
                                                     reference_ids=shard.reference_ids,
                                                     cache_meta=dict(cache_meta, condition=int(condition)),
                                                     replace_stale=config.replace_stale_cache,
                                                     query_batch=config.query_batch or None)
        seconds = time.perf_counter() - start
        bar.close()
        # per pair: insertion curve, deletion curve, pointing hit and mass on the key (NaN: not measured)
        steps = config.insertion_steps
        measured = np.full((len(pairs), 2 * steps + 2), np.nan, np.float32)
        for condition in np.unique(conditions):  # every pair's 2 x S perturbed queries, batched (and sharded)
            chosen = np.flatnonzero(conditions == condition)
            f = sim.embed_for(condition)
            scores = sx.metrics.insertion_deletion_batch(
                f, shard.queries[pairs[chosen, 0]], apply_in_chunks(f, shard.references[pairs[chosen, 1]]), maps[chosen],
                background=background, num_steps=steps, mesh=mesh)
            measured[chosen, :steps], measured[chosen, steps:2 * steps] = scores.insertion_curve, scores.deletion_curve
        for i in np.flatnonzero(positive) if key_masks else []:
            point = sx.metrics.pointing(maps[i], shard.query_fields["key_mask"][pairs[i, 0]])
            measured[i, -2:] = point.hit, point.mass_on_key
        # every process's rows, in pair order; the slowest process's time
        measured = parallel.gather_rows(shard.positions, measured, num_pairs)
        seconds = float(parallel.gather_rows([jax.process_index()], [seconds], jax.process_count()).max())
        slot = {int(p): k for k, p in enumerate(shown)}
        gallery = parallel.gather_rows([slot[int(p)] for p in shard.positions[in_gallery]], maps[in_gallery],
                                       len(shown))
        ins_curve, del_curve = np.mean(measured[:, :steps], 0), np.mean(measured[:, steps:2 * steps], 0)
        hits, mass = measured[:, -2], measured[:, -1]
        row = {
            "method": method, "reference": reference,
            "insertion_auc": 100 * float(sx.metrics.trapezoid_auc(ins_curve)),
            "deletion_auc": 100 * float(sx.metrics.trapezoid_auc(del_curve)),
            "pointing_accuracy": float(np.nanmean(hits)) if np.isfinite(hits).any() else None,
            "mass_on_key": float(np.nanmean(mass)) if np.isfinite(mass).any() else None,
            "seconds_per_pair": seconds / num_pairs,
        }
        if main_process:  # the row is done: a kill from here on does not lose it
            write_row_record(workdir, name, identity, row, np.stack([ins_curve, del_curve]), gallery)
            print(json.dumps(row), flush=True)

    if not main_process:  # process 0 has every process's results and writes them
        return None
    # this run's rows and those of earlier runs on this workdir (same model, pairs and protocol)
    reported = merged_rows(workdir, [name for _, _, name in rows], evaluation)
    results = [r[1] for r in reported]
    curves = {name: (c[0], c[1]) for name, _, c, _ in reported}
    gallery_maps = {name: g for name, _, _, g in reported}
    summary = {"rows": results, "num_pairs": int(num_pairs), "num_positive": int(len(positives)),
               "dataset": dataset, "split": config.split, **sim.record,
               "background": config.background, "insertion_steps": config.insertion_steps,
               "num_processes": jax.process_count(), "devices_per_process": mesh.devices.size if mesh else 1}
    write_json_atomic(os.path.join(workdir, "results.json"), summary)
    lines = [f"{num_pairs} pairs ({len(positives)} positive) of {dataset} {config.split}; "
             "AUC x100; pointing and mass on the key object over positive pairs", "",
             *markdown_table(["method", "reference", "insertion AUC (higher better)", "deletion AUC (lower better)",
                              "pointing accuracy", "mass on key", "s / pair"],
                             [[r["method"], r["reference"], r["insertion_auc"], r["deletion_auc"],
                               r["pointing_accuracy"], r["mass_on_key"], r["seconds_per_pair"]] for r in results],
                             formats={2: "{:.1f}".format, 3: "{:.1f}".format})]
    write_atomic(os.path.join(workdir, "results.md"), "\n".join(lines) + "\n")
    viz.curves(os.path.join(workdir, "curves.png"), curves)
    viz.pair_gallery(os.path.join(workdir, "gallery.png"),
                     read_images(listed.source, listed.pairs[shown, 0], listed.image_size),
                     read_images(listed.source, listed.pairs[shown, 1], listed.image_size), gallery_maps,
                     title=f"{dataset}: positive pairs, every method's map over the query")
    print("\n".join(lines))
    return summary


def main():
    flags_main(run, "experiments/configs/saliency_*.py")


if __name__ == "__main__":
    main()
