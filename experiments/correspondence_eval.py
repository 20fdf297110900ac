"""Correspondence evaluation: which cell of the query matches which cell of the reference, scored
against the key objects of both images (positive test pairs of the shapes benchmark).

    python -m experiments.correspondence_eval --config=experiments/configs/correspondence_shapes.py:runlocal \
        --workdir=DIR

Rows (``config.rows``, options under ``config.methods.<row>``): the pair methods (``pooled_pair``,
``rise_pair``, ``integrated_cross_jacobian``), first-order RISE (no correspondence; its map is
compared on the first-order columns) and random correspondences (the floor). Columns:
correspondence pointing (the strongest cell pair on both key objects) and its top-k share,
correspondence mass, second-order insertion/deletion AUC (x100; each image's cells inserted into,
or deleted to, an unrelated image: ``config.second_order_substrate``), the first-order pointing and
insertion/deletion of the query map (the correspondence's row sums) and of the reference map (its
column sums, scored against the query), forward passes and seconds per pair (compiled: pairs run in batches of ``pair_batch``, the first batch, which compiles, not timed
when there are more). Writes ``results.json`` (``rows``, ``num_pairs``, ...) and ``results.md``; one run per
workdir at a time (``<workdir>/.lock``).

In-process: ``run(config, workdir)``.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from tqdm import tqdm

import simexplain_jax as sx
from experiments import train_similarity
from experiments.tables import markdown_table
from experiments.stages import ensure_stage, flags_main
from experiments.workdir_lock import WorkdirLock
from simexplain_jax.data import shards
from simexplain_jax.data.datasets import explanation_pair_list
from simexplain_jax.data.preprocess import normalized_color
from simexplain_jax.engine import apply_in_chunks
from simexplain_jax.io import write_atomic, write_json_atomic
from simexplain_jax.models import embed_fn
from simexplain_jax.models.loading import load_trained

PAIR_METHODS = ("pooled_pair", "rise_pair", "integrated_cross_jacobian")
KINDS = PAIR_METHODS + ("rise", "random")


def check_config(config) -> list:
    """The rows as (name, method, options); raises naming the field at fault, before any work."""
    rows = []
    for name in config.rows:
        if name not in config.methods:
            raise ValueError(f"config.rows names {name!r}, which config.methods does not define "
                             f"(defined: {', '.join(sorted(config.methods))})")
        options = dict(config.methods[name])
        method = options.pop("method", None)
        if method not in KINDS:
            raise ValueError(f"config.methods.{name}.method must be one of {KINDS}, got {method!r}")
        if method == "rise_pair":
            sx.saliency.RisePair(**dict(options, grid_size=config.grid_size))
        elif method == "integrated_cross_jacobian":
            sx.saliency.IntegratedCrossJacobian(**dict(options, grid_size=config.grid_size))
        elif method == "pooled_pair":
            sx.saliency.PooledPair(**options)
        elif method == "rise":
            sx.saliency.Rise(**options)
        rows.append((name, method, options))
    if config.second_order_substrate not in ("unrelated", "background"):
        raise ValueError(f"config.second_order_substrate must be 'unrelated' or 'background', got "
                         f"{config.second_order_substrate!r}")
    if config.pair_batch < 1:
        raise ValueError(f"config.pair_batch must be >= 1, got {config.pair_batch}")
    if config.num_pairs < 2:
        raise ValueError(f"config.num_pairs must be >= 2 (half of them positive), got {config.num_pairs}")
    return rows


def run(config, workdir: str) -> dict:
    """Checks ``config``, then evaluates under the workdir's lock; returns what ``results.json`` holds."""
    rows = check_config(config)
    with WorkdirLock(workdir):
        return evaluate(config, workdir, rows)


def _explain(method, options, config, model, variables, embed, queries, references, key):
    """(correspondences [P, ...] or None, query maps [P, H, W], reference maps [P, H, W] or None,
    passes per pair)."""
    grid = config.grid_size
    if method == "pooled_pair":
        out = sx.saliency.pooled_pair(model, variables, queries, references, **options)
    elif method == "rise_pair":
        out = sx.saliency.rise_pair(embed, queries, references, key=key, grid_size=grid, **options)
    elif method == "integrated_cross_jacobian":
        out = sx.saliency.integrated_cross_jacobian(embed, queries, references, grid_size=grid, **options)
    elif method == "rise":
        pairs = np.stack([np.arange(len(queries))] * 2, axis=1)
        maps = sx.saliency.explain_pairs("rise", embed, queries, references, key=key, pairs=pairs, config=options)
        return None, maps, None, int(sx.saliency.Rise(**options).num_masks)
    else:  # random: uniform contributions, the floor every method must beat
        corr = jax.random.uniform(key, (len(queries), grid, grid, grid, grid))
        maps = jax.vmap(lambda c: sx.saliency.first_order_maps(c, queries.shape[1:], references.shape[1:]))(corr)
        return np.asarray(corr), np.asarray(maps[0]), np.asarray(maps[1]), 0
    jax.block_until_ready(out.correspondence)
    return (np.asarray(out.correspondence), np.asarray(out.query_map), np.asarray(out.reference_map),
            int(out.passes))


def explain_in_batches(method, options, config, model, variables, embed, queries, references, key, progress=None):
    """``_explain`` over batches of ``config.pair_batch`` pairs (the last one padded with its last pair),
    so one compiled program serves every batch; ``progress(n)`` is called with the pairs of each batch
    done. Returns the outputs and the seconds per pair of the batches after the first (which
    compiles), or of the first when there is only one."""
    size, total = config.pair_batch, len(queries)
    outputs, seconds = [], []
    for index, start in enumerate(range(0, total, size)):
        chosen = np.minimum(np.arange(start, start + size), total - 1)
        began = time.perf_counter()
        outputs.append(_explain(method, options, config, model, variables, embed, queries[chosen], references[chosen],
                                jax.random.fold_in(key, index)))
        seconds.append((time.perf_counter() - began) / size)
        if progress is not None:
            progress(min(size, total - start))
    corr = None if outputs[0][0] is None else np.concatenate([o[0] for o in outputs])[:total]
    maps = np.concatenate([o[1] for o in outputs])[:total]
    reference_maps = None if outputs[0][2] is None else np.concatenate([o[2] for o in outputs])[:total]
    return corr, maps, reference_maps, outputs[0][3], float(np.mean(seconds[1:] if len(seconds) > 1 else seconds))


def evaluate(config, workdir: str, rows: list) -> dict:
    os.makedirs(workdir, exist_ok=True)
    data_dir = config.data_dir or os.path.join(workdir, "tfds")
    sim_dir = ensure_stage(train_similarity.run, config.similarity_config,
                           config.similarity_workdir or os.path.join(workdir, "similarity"), {"data_dir": data_dir},
                           given=bool(config.similarity_workdir))
    model, variables, sim_config = load_trained(os.path.join(sim_dir, "checkpoints"))
    dataset = sim_config["dataset"]
    listed = explanation_pair_list(dataset, data_dir=data_dir, split=config.split, num_pairs=config.num_pairs,
                                   seed=config.seed)
    if "key_mask" not in listed.query_keys:
        raise ValueError(f"{dataset} has no key-object masks: the correspondence metrics need them")
    positive = np.flatnonzero(listed.labels == 1)
    pair_ids = listed.pairs[positive]
    shard = shards.read_pair_shard(listed.source, listed.source, pair_ids, preprocess=listed.preprocess)
    queries, references = shard.queries[shard.pairs[:, 0]], shard.references[shard.pairs[:, 1]]
    height, width = queries.shape[1:3]
    key_q = np.stack([np.asarray(listed.source[int(i)]["key_mask"]).reshape(height, width) for i in pair_ids[:, 0]])
    key_r = np.stack([np.asarray(listed.source[int(i)]["key_mask"]).reshape(height, width) for i in pair_ids[:, 1]])
    key_q, key_r = key_q.astype(bool), key_r.astype(bool)
    embed = embed_fn(model, variables)
    reference_embeddings = apply_in_chunks(embed, references)
    query_embeddings = apply_in_chunks(embed, queries)
    background = normalized_color(config.background)
    key = jax.random.key(config.seed)
    results = []
    for name, method, options in rows:
        with tqdm(total=len(queries), desc=name, unit="pair") as bar:
            corr, maps, reference_maps, passes, seconds = explain_in_batches(
                method, options, config, model, variables, embed, queries, references, key, progress=bar.update)
        row = {"method": name, "passes_per_pair": passes, "seconds_per_pair": seconds}
        if corr is not None:
            scores = [sx.metrics.correspondence_pointing(c, kq, kr, k=config.top_k) for c, kq, kr in
                      zip(corr, key_q, key_r)]
            substrate = {} if config.second_order_substrate == "unrelated" else dict(background=background)
            second = sx.metrics.second_order_insertion_deletion(embed, queries, references, corr,
                                                                num_steps=config.insertion_steps, **substrate)
            row.update(correspondence_pointing=float(np.mean([s.hit for s in scores])),
                       correspondence_top_k=float(np.mean([s.top_k for s in scores])),
                       correspondence_mass=float(np.mean([s.mass for s in scores])),
                       second_order_insertion_auc=100 * float(np.mean(second.insertion_auc)),
                       second_order_deletion_auc=100 * float(np.mean(second.deletion_auc)))
        first = sx.metrics.insertion_deletion_batch(embed, queries, reference_embeddings, maps,
                                                    background=background, num_steps=config.insertion_steps)
        row.update(first_order_pointing=float(np.mean([sx.metrics.pointing(m, k).hit for m, k in zip(maps, key_q)])),
                   first_order_insertion_auc=100 * float(np.mean(first.insertion_auc)),
                   first_order_deletion_auc=100 * float(np.mean(first.deletion_auc)))
        if reference_maps is not None:  # the column sums: the reference's first-order map, against the query
            column = sx.metrics.insertion_deletion_batch(embed, references, query_embeddings, reference_maps,
                                                         background=background, num_steps=config.insertion_steps)
            row.update(reference_pointing=float(np.mean([sx.metrics.pointing(m, k).hit
                                                          for m, k in zip(reference_maps, key_r)])),
                       reference_insertion_auc=100 * float(np.mean(column.insertion_auc)),
                       reference_deletion_auc=100 * float(np.mean(column.deletion_auc)))
        results.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    summary = {"dataset": dataset, "split": config.split, "num_pairs": int(len(queries)), "grid_size": config.grid_size,
               "top_k": config.top_k, "insertion_steps": config.insertion_steps, "rows": results}
    write_json_atomic(os.path.join(workdir, "results.json"), summary)
    columns = ["method", "correspondence_pointing", "correspondence_top_k", "correspondence_mass",
               "second_order_insertion_auc", "second_order_deletion_auc", "first_order_pointing",
               "first_order_insertion_auc", "first_order_deletion_auc", "reference_pointing",
               "reference_insertion_auc", "reference_deletion_auc", "passes_per_pair", "seconds_per_pair"]
    lines = [f"{dataset} {config.split}: {len(queries)} positive pairs", "",
             *markdown_table(columns, [[row.get(c, "") for c in columns] for row in results])]
    write_atomic(os.path.join(workdir, "results.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


def main():
    flags_main(run, "experiments/configs/correspondence_*.py")


if __name__ == "__main__":
    main()
