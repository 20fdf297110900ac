"""Saliency evaluation (the paper's Table 1): every method x {fixed, variable} reference, plus
random, scored by insertion and deletion AUC (x100) and, on the shapes benchmark, by the pointing
game and the saliency mass on the key object (positive pairs).

    python -m experiments.saliency_eval --config=experiments/configs/saliency_shapes.py:runlocal --workdir=DIR

Maps are cached per method under ``<workdir>/cache`` (one file per query), so a killed run
resumes without recomputing finished pairs. Writes ``results.json`` (``rows``: method, reference, insertion_auc, deletion_auc,
pointing_accuracy, mass_on_key, seconds_per_pair; ``num_pairs``, ``num_positive``, ...),
``results.md``, ``curves.png`` (mean insertion/deletion curves) and ``gallery.png``.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

import simexplain_jax as sx
from simexplain_jax import parallel, viz
from simexplain_jax.checkpoint import write_json_atomic
from simexplain_jax.data.preprocess import normalize_images, normalized_color
from simexplain_jax.models import condition_embed_fn, embed_fn
from simexplain_jax.train.datasets import explanation_pairs
from simexplain_jax.train.similarity import load_trained
from experiments.stages import ensure_stage

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/configs/saliency_*.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder")
flags.mark_flags_as_required(["config", "workdir"])


def parse_rows(rows: str):
    """``"rise:fixed,rise:variable,..."`` -> [(method, reference, saliency method name)]."""
    parsed = []
    for row in [r.strip() for r in rows.split(",") if r.strip()]:
        method, _, reference = row.partition(":")
        name = method if reference == "fixed" else f"{method}_{reference}"
        if reference not in ("fixed", "variable") or name not in sx.saliency.METHODS:
            raise ValueError(f"bad row {row!r}: use METHOD:fixed or METHOD:variable with METHOD in "
                             f"{sorted(set(m.removesuffix('_variable') for m in sx.saliency.METHODS))}")
        parsed.append((method, reference, name))
    return parsed


def main(argv):
    del argv
    config, workdir = _CONFIG.value, _WORKDIR.value
    logging.set_verbosity(logging.WARNING)
    rows = parse_rows(config.rows)
    if config.distributed.num_processes > 1:  # one command per host; see the README's "Many devices and hosts"
        parallel.initialize_distributed(config.distributed.coordinator_address, config.distributed.num_processes,
                                        config.distributed.process_id)
    mesh = parallel.make_mesh(config.mesh_devices or None, local=True)
    os.makedirs(workdir, exist_ok=True)
    data_dir = config.data_dir or os.path.join(workdir, "tfds")
    sim_dir = ensure_stage("train_similarity", config.similarity_config,
                           config.similarity_workdir or os.path.join(workdir, "similarity"),
                           {"data_dir": data_dir, "manual_dir": config.manual_dir})
    model, variables, sim_config = load_trained(os.path.join(sim_dir, "checkpoints"))
    data = explanation_pairs(sim_config["dataset"], data_dir=data_dir, manual_dir=config.manual_dir,
                             split=config.split, num_pairs=config.num_pairs, seed=config.seed,
                             test_pairs=config.test_pairs)
    images = normalize_images(data.images)
    background = normalized_color(config.background)
    conditions = data.conditions if data.conditions is not None else np.full(len(data.pairs), -1)
    positives = np.flatnonzero(data.labels == 1)
    key = jax.random.key(config.seed)

    def embed_for(condition):
        return condition_embed_fn(model, variables, int(condition)) if condition >= 0 else embed_fn(model, variables)

    results, curves, all_maps = [], {}, {}
    for method, reference, name in rows:
        options = config.methods[name].to_dict() if name in config.methods else {}
        maps = np.zeros((len(data.pairs), *images.shape[1:3]), np.float32)
        bar = tqdm(total=len(data.pairs), desc=f"{method}/{reference}", unit="pair", leave=False)
        start = time.perf_counter()
        for condition in np.unique(conditions):
            chosen = np.flatnonzero(conditions == condition)
            cache_dir = os.path.join(workdir, "cache", name if condition < 0 else f"{name}_c{condition}")
            if config.distributed.num_processes > 1:
                maps[chosen] = parallel.explain_pairs_distributed(name, embed_for(condition), images, images, key=key,
                                                                  pairs=data.pairs[chosen], config=options)
            else:
                maps[chosen] = sx.saliency.explain_pairs(name, embed_for(condition), images, images, key=key,
                                                         pairs=data.pairs[chosen], config=options,
                                                         progress=bar.update, cache_dir=cache_dir,
                                                         mesh=mesh if len(mesh.devices.ravel()) > 1 else None)
        seconds = time.perf_counter() - start
        bar.close()
        insertion = np.zeros((len(data.pairs), config.insertion_steps), np.float32)
        deletion = np.zeros_like(insertion)
        for condition in np.unique(conditions):  # every pair's 2 x S perturbed queries, batched (and sharded)
            chosen = np.flatnonzero(conditions == condition)
            f = embed_for(condition)
            refs = np.asarray(f(images[data.pairs[chosen, 1]]))
            scores = sx.metrics.insertion_deletion_batch(
                f, images[data.pairs[chosen, 0]], refs, maps[chosen], background=background,
                num_steps=config.insertion_steps, mesh=mesh if len(mesh.devices.ravel()) > 1 else None)
            insertion[chosen], deletion[chosen] = scores.insertion_curve, scores.deletion_curve
        hits, mass = [], []
        for i, (q, r) in enumerate(data.pairs):
            if data.key_masks is not None and data.labels[i] == 1:
                point = sx.metrics.pointing(maps[i], data.key_masks[q])
                hits.append(point.hit)
                mass.append(point.mass_on_key)
        ins_curve, del_curve = np.mean(insertion, 0), np.mean(deletion, 0)
        curves[name] = (ins_curve, del_curve)
        all_maps[name] = maps
        results.append({
            "method": method, "reference": reference,
            "insertion_auc": 100 * float(sx.metrics.trapezoid_auc(ins_curve)),
            "deletion_auc": 100 * float(sx.metrics.trapezoid_auc(del_curve)),
            "pointing_accuracy": float(np.mean(hits)) if hits else None,
            "mass_on_key": float(np.mean(mass)) if mass else None,
            "seconds_per_pair": seconds / len(data.pairs),
        })
        print(json.dumps(results[-1]), flush=True)

    summary = {"rows": results, "num_pairs": int(len(data.pairs)), "num_positive": int(len(positives)),
               "dataset": sim_config["dataset"], "split": config.split, "similarity_workdir": sim_dir,
               "background": config.background, "insertion_steps": config.insertion_steps}
    if jax.process_index() != 0:  # every process has all maps; process 0 writes
        return
    write_json_atomic(os.path.join(workdir, "results.json"), summary)
    lines = [f"{len(data.pairs)} pairs ({len(positives)} positive) of {sim_config['dataset']} {config.split}; "
             "AUC x100; pointing and mass on the key object over positive pairs", "",
             "| method | reference | insertion AUC (higher better) | deletion AUC (lower better) | pointing accuracy "
             "| mass on key | s / pair |", "|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines += [f"| {r['method']} | {r['reference']} | {r['insertion_auc']:.1f} | {r['deletion_auc']:.1f} | "
              f"{fmt(r['pointing_accuracy'])} | {fmt(r['mass_on_key'])} | {r['seconds_per_pair']:.3f} |" for r in results]
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    viz.curves(os.path.join(workdir, "curves.png"), curves)
    shown = positives[: config.gallery_pairs] if len(positives) else np.arange(min(config.gallery_pairs, len(data.pairs)))
    viz.pair_gallery(os.path.join(workdir, "gallery.png"), data.images[data.pairs[shown, 0]],
                     data.images[data.pairs[shown, 1]], {name: m[shown] for name, m in all_maps.items()},
                     title=f"{sim_config['dataset']}: positive pairs, every method's map over the query")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
