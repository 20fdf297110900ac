"""How many forward passes a RISE map needs, per mask sampler: quality against passes.

For each model, sampler (``sx.masks.SAMPLERS``) and N in ``--num_masks``, fixed-reference RISE
maps of ``--pairs`` positive pairs are scored by

- ``correlation``: the mean over pairs of the Pearson correlation of the map with a reference
  map from ``--reference_masks`` i.i.d. masks (another key), the estimate of the converged map;
- ``pointing``: pointing accuracy on the query's key object (the shapes benchmark's ground truth);
- ``insertion_auc`` / ``deletion_auc`` (x100, SANE protocol: grey-127 background, per-pair min-max);
- ``passes_per_s``: N x pairs / seconds of the ``explain_pairs`` call (compiled beforehand).

With ``--tolerances`` it also runs ``rise(..., tolerance=t, num_masks=max N)`` per pair and
reports the mean passes used and the map's correlation. Prints JSON lines (one per
measurement, then a ``summary`` per model: for each sampler the fewest passes whose correlation
and pointing reach the i.i.d. sampler's at ``--target_masks``) and draws quality against passes
in ``--plot``.

Models (``--models``, comma-separated):

- ``shapes``: the trained similarity model of ``--similarity_workdir`` (train one with
  ``python -m experiments.train_similarity --config=experiments/configs/similarity_shapes.py
  --workdir=DIR``) on its shapes test pairs (``--data_dir``: the TFDS folder, default
  ``<similarity_workdir>/tfds``);
- ``resnet18``: ResNet-18 cut after layer3 (the paper's backbone) + a linear head to 64, with
  ``--resnet_weights`` (a torchvision ResNet-18 state dict) or random weights, on the same pairs
  resized to ``--resnet_size`` px;
- ``small_cnn``: the shapes benchmark's CNN with random weights, on the pairs at their size.

``--save_inputs=FILE.npz`` writes the pairs (uint8 images, key masks) and ``--inputs=FILE.npz``
reads them instead of TFDS (for a machine without the data stack). ``--reference_cache=DIR``
keeps the reference maps, so a later run (e.g. ``--fixed_n=false --tolerances=...``) reuses them;
``--plot_from=a.jsonl,b.jsonl --plot=FILE.png`` draws earlier runs together. The
``passes_per_s`` of the fixed-N rows is wall-clock of one call each (on a shared machine, load
changes between rows); the ``throughput`` rows time the samplers in turn in each of
``--repeats`` rounds, and ``mask_generation`` times the masks alone.

Full scale (the issue's protocol; hours on a 2-core CPU, minutes on a GPU):

    python -m benchmarks.saliency_convergence --models=shapes,resnet18 --similarity_workdir=runs/sim64 \\
      --pairs=100 --reference_masks=32000 --out=benchmarks/results/saliency_convergence.jsonl \\
      --plot=benchmarks/results/saliency_convergence.png
"""

from __future__ import annotations

import json
import os
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import simexplain_jax as sx
from simexplain_jax import engine, imageops
from benchmarks._common import emit, machine, make_embed_fn

FLAGS = flags.FLAGS
flags.DEFINE_string("models", "shapes,resnet18", "comma-separated: shapes, resnet18, small_cnn")
flags.DEFINE_string("similarity_workdir", "", "experiments.train_similarity workdir of the shapes model")
flags.DEFINE_string("data_dir", "", "TFDS folder with the shapes data (default <similarity_workdir>/tfds)")
flags.DEFINE_string("dataset", "shapes/64px", "the pairs' dataset when no shapes model names it")
flags.DEFINE_integer("pairs", 100, "positive test pairs")
flags.DEFINE_integer("reference_masks", 32000, "i.i.d. masks of the reference map")
flags.DEFINE_string("num_masks", "125,250,500,1000,2000,4000", "N values")
flags.DEFINE_string("samplers", ",".join(sx.masks.SAMPLERS), "samplers to compare")
flags.DEFINE_integer("target_masks", 2000, "the i.i.d. N whose quality the summary asks the others to reach")
flags.DEFINE_string("tolerances", "", "comma-separated tolerances for rise(..., tolerance=t) (empty: none)")
flags.DEFINE_string("tolerance_samplers", "iid,orthogonal", "samplers of the tolerance runs")
flags.DEFINE_integer("resnet_size", 112, "image side for the resnet18 model")
flags.DEFINE_string("resnet_weights", "", "torchvision ResNet-18 state dict (.pth / .npz); empty: random weights")
flags.DEFINE_integer("batch_size", 250, "masks per chunk")
flags.DEFINE_integer("insertion_steps", 101, "insertion/deletion steps (0: skip)")
flags.DEFINE_integer("seed", 0, "key of the maps (the reference map uses another key)")
flags.DEFINE_string("inputs", "", "read the pairs from this .npz (written by --save_inputs) instead of TFDS")
flags.DEFINE_string("save_inputs", "", "write the pairs to this .npz")
flags.DEFINE_integer("timing_pairs", 4, "pairs of the interleaved throughput measurement (0: skip)")
flags.DEFINE_integer("repeats", 3, "timed rounds of the throughput measurement (best kept)")
flags.DEFINE_string("reference_cache", "", "folder: reference maps are stored there per model and reused")
flags.DEFINE_bool("fixed_n", True, "run the fixed-N measurements (off: only the reference and --tolerances)")
flags.DEFINE_string("out", "", "also write the JSON lines here")
flags.DEFINE_string("plot", "", "PNG of quality against passes")
flags.DEFINE_string("plot_from", "", "comma-separated JSON-lines files of earlier runs: plot them (nothing is run)")

_LINES = []


def record(line: dict) -> None:
    _LINES.append(line)
    emit(line)


def load_pairs(dataset: str, data_dir: str, count: int):
    """``(queries, references, key_masks)``: uint8 images ``[P, H, W, 3]`` of ``count`` positive
    test pairs and the queries' key-object masks ``[P, H, W]``."""
    if FLAGS.inputs:
        with np.load(FLAGS.inputs) as data:
            return data["queries"][:count], data["references"][:count], data["key_masks"][:count]
    from simexplain_jax.data.datasets import explanation_pairs  # the data stack only when reading TFDS

    listed = explanation_pairs(dataset, data_dir=data_dir, split="test", num_pairs=4 * count, seed=FLAGS.seed)
    positive = np.flatnonzero(listed.labels == 1)[:count]
    if len(positive) < count:
        raise ValueError(f"only {len(positive)} positive test pairs, asked for {count}")
    q, r = listed.pairs[positive, 0], listed.pairs[positive, 1]
    out = listed.images[q], listed.images[r], listed.key_masks[q].astype(bool)
    if FLAGS.save_inputs:
        np.savez_compressed(FLAGS.save_inputs, queries=out[0], references=out[1], key_masks=out[2])
    return out


def resize(images: np.ndarray, size: int, method: str) -> np.ndarray:
    if images.shape[1] == size:
        return images
    shape = (images.shape[0], size, size, *images.shape[3:])
    return np.asarray(jax.image.resize(jnp.asarray(images, jnp.float32), shape, method))


def model_and_inputs(name: str):
    """``(embed_fn, description, queries, references, key_masks)`` with normalised float images."""
    data_dir = FLAGS.data_dir or (os.path.join(FLAGS.similarity_workdir, "tfds") if FLAGS.similarity_workdir else "")
    if name == "shapes":
        from simexplain_jax.models.loading import load_trained

        if not FLAGS.similarity_workdir:
            raise ValueError("--models=shapes needs --similarity_workdir (a trained shapes similarity model)")
        model, variables, config = load_trained(os.path.join(FLAGS.similarity_workdir, "checkpoints"))
        queries, references, keys = load_pairs(config["dataset"], data_dir, FLAGS.pairs)
        size = queries.shape[1]
        embed = sx.models.embed_fn(model, variables)
        description = f"trained {config['model']} ({config['dataset']}, {FLAGS.similarity_workdir}), {size} px"
    elif name in ("resnet18", "small_cnn"):
        queries, references, keys = load_pairs(FLAGS.dataset, data_dir, FLAGS.pairs)
        size = FLAGS.resnet_size if name == "resnet18" else queries.shape[1]
        embed = make_embed_fn(name, size)
        weights = "random weights"
        if name == "resnet18" and FLAGS.resnet_weights:
            from simexplain_jax.models.torchvision_import import load_torchvision_resnet

            variables = load_torchvision_resnet(embed.args[0], FLAGS.resnet_weights, prefix=("backbone",))
            embed = jax.tree_util.Partial(embed.func, variables)
            weights = f"weights {FLAGS.resnet_weights}"
        queries, references = resize(queries, size, "linear"), resize(references, size, "linear")
        keys = resize(keys.astype(np.float32), size, "nearest") > 0.5
        description = (f"ResNet-18/layer3 + linear 64, {weights}" if name == "resnet18" else
                       "small CNN, random weights") + f", {size} px, shapes test pairs resized"
    else:
        raise ValueError(f"unknown model {name!r} (shapes, resnet18, small_cnn)")
    norm = imageops.normalize_images
    return embed, description, norm(queries), norm(references), keys


def correlation(maps: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Pearson correlation per pair of ``maps [P, H, W]`` with ``reference [P, H, W]``."""
    a = maps.reshape(len(maps), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-300)


def quality(embed, queries, reference_embeddings, keys, maps, reference_maps) -> dict:
    out = {"correlation": float(correlation(maps, reference_maps).mean()),
           "pointing": float(np.mean([sx.metrics.pointing(m, k).hit for m, k in zip(maps, keys)]))}
    if FLAGS.insertion_steps:
        scores = sx.metrics.insertion_deletion_batch(embed, queries, reference_embeddings, maps,
                                                     background=imageops.normalized_color(127),
                                                     num_steps=FLAGS.insertion_steps)
        out["insertion_auc"] = 100 * float(np.mean(scores.insertion_auc))
        out["deletion_auc"] = 100 * float(np.mean(scores.deletion_auc))
    return out


def explain(embed, queries, references, key, config):
    """Maps of pairs (i, i) and the seconds of the call after a one-pair call compiled it."""
    pairs = np.stack([np.arange(len(queries))] * 2, 1)
    sx.saliency.explain_pairs("rise", embed, queries[:1], references[:1], key=key, pairs=pairs[:1], config=config)
    start = time.perf_counter()
    maps = sx.saliency.explain_pairs("rise", embed, queries, references, key=key, pairs=pairs, config=config)
    return maps, time.perf_counter() - start


def run_model(name: str) -> list[dict]:
    embed, description, queries, references, keys = model_and_inputs(name)
    counts = [int(n) for n in FLAGS.num_masks.split(",")]
    samplers = [s.strip() for s in FLAGS.samplers.split(",") if s.strip()]
    base = dict(model=name, description=description, pairs=len(queries), image_size=int(queries.shape[1]),
                reference_masks=FLAGS.reference_masks, machine=machine())
    key = jax.random.key(FLAGS.seed)
    reference_embeddings = engine.apply_in_chunks(embed, references)
    cached = (os.path.join(FLAGS.reference_cache, f"{name}_{len(queries)}_{FLAGS.reference_masks}_{FLAGS.seed}.npz")
              if FLAGS.reference_cache else "")
    if cached and os.path.exists(cached):
        with np.load(cached) as data:
            reference_maps, seconds = data["maps"], float(data["seconds"])
    else:
        reference_maps, seconds = explain(embed, queries, references, jax.random.fold_in(key, 10 ** 6),
                                          dict(num_masks=FLAGS.reference_masks, batch_size=FLAGS.batch_size))
        if cached:
            os.makedirs(FLAGS.reference_cache, exist_ok=True)
            np.savez(cached, maps=reference_maps, seconds=seconds)
    limit = quality(embed, queries, reference_embeddings, keys, reference_maps, reference_maps)
    record(dict(base, kind="reference", sampler="iid", num_masks=FLAGS.reference_masks, **limit,
                passes_per_s=FLAGS.reference_masks * len(queries) / seconds))
    rows = []
    for sampler in samplers if FLAGS.fixed_n else []:
        for n in counts:
            config = dict(num_masks=n, batch_size=FLAGS.batch_size, sampler=sampler)
            maps, seconds = explain(embed, queries, references, key, config)
            row = dict(base, kind="fixed_n", sampler=sampler, num_masks=n, passes=n,
                       **quality(embed, queries, reference_embeddings, keys, maps, reference_maps),
                       passes_per_s=n * len(queries) / seconds)
            record(row)
            rows.append(row)
    for tolerance in [float(t) for t in FLAGS.tolerances.split(",") if t.strip()]:
        for sampler in [s.strip() for s in FLAGS.tolerance_samplers.split(",") if s.strip()]:
            maps, passes, errors = [], [], []
            for i in range(len(queries)):
                result = sx.saliency.rise(embed, queries[i], reference_embeddings[i], key=jax.random.fold_in(key, i),
                                          num_masks=max(counts), batch_size=FLAGS.batch_size, sampler=sampler,
                                          tolerance=tolerance)
                maps.append(np.asarray(result.maps))
                passes.append(int(result.passes))
                errors.append(float(result.error))
            maps = np.stack(maps)
            row = dict(base, kind="tolerance", sampler=sampler, tolerance=tolerance, passes=float(np.mean(passes)),
                       max_passes=int(np.max(passes)), min_passes=int(np.min(passes)),
                       estimated_relative_error=float(np.mean(errors)),
                       **quality(embed, queries, reference_embeddings, keys, maps, reference_maps))
            record(row)
            rows.append(row)
    if FLAGS.timing_pairs:
        rows += mask_generation(base, samplers, int(queries.shape[1]))
        rows += throughput(name, base, embed, queries[:FLAGS.timing_pairs], references[:FLAGS.timing_pairs], samplers)
    record(summarize(name, rows, limit))
    return rows


def mask_generation(base, samplers, size: int, count: int = 4000) -> list[dict]:
    """Microseconds per mask of ``sx.masks.rise_masks`` (generation alone, no model), best of 3."""
    rows = []
    for sampler in samplers:
        def make():
            return jax.block_until_ready(sx.masks.rise_masks((size, size), key=jax.random.key(0), num_masks=count,
                                                             sampler=sampler))
        make()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            make()
            best = min(best, time.perf_counter() - start)
        rows.append(dict(base, kind="mask_generation", sampler=sampler, num_masks=count,
                         us_per_mask=1e6 * best / count))
        record(rows[-1])
    return rows


def throughput(name, base, embed, queries, references, samplers) -> list[dict]:
    """Passes per second of each sampler at ``--target_masks``, the samplers timed in turn in
    each of ``--repeats`` rounds (best kept), so that a shared machine's load hits all alike."""
    pairs = np.stack([np.arange(len(queries))] * 2, 1)
    n, key = FLAGS.target_masks, jax.random.key(FLAGS.seed)
    best = {}
    for sampler in samplers:  # compile
        explain(embed, queries[:1], references[:1], key,
                dict(num_masks=n, batch_size=FLAGS.batch_size, sampler=sampler))
    for _ in range(FLAGS.repeats):
        for sampler in samplers:
            start = time.perf_counter()
            sx.saliency.explain_pairs("rise", embed, queries, references, key=key, pairs=pairs,
                                      config=dict(num_masks=n, batch_size=FLAGS.batch_size, sampler=sampler))
            best[sampler] = min(best.get(sampler, float("inf")), time.perf_counter() - start)
    rows = []
    for sampler in samplers:
        rows.append(dict(base, kind="throughput", sampler=sampler, num_masks=n, pairs=len(queries),
                         passes_per_s=n * len(queries) / best[sampler],
                         time_ratio_to_iid=best[sampler] / best["iid"] if "iid" in best else None))
        record(rows[-1])
    return rows


def summarize(name: str, rows: list[dict], limit: dict) -> dict:
    """For each sampler, the fewest passes at which it reaches the i.i.d. target's correlation
    and pointing (None: not within the measured N)."""
    fixed = [r for r in rows if r["kind"] == "fixed_n"]
    target = [r for r in fixed if r["sampler"] == "iid" and r["num_masks"] == FLAGS.target_masks]
    summary = {"kind": "summary", "model": name, "target_masks": FLAGS.target_masks, "reference_limit": limit}
    if not target:
        return summary
    target = target[0]
    summary["target"] = {k: target[k] for k in ("correlation", "pointing")}
    reach = {}
    for sampler in dict.fromkeys(r["sampler"] for r in fixed):
        ok = [r["num_masks"] for r in fixed if r["sampler"] == sampler and
              r["correlation"] >= target["correlation"] and r["pointing"] >= target["pointing"]]
        corr = [r["num_masks"] for r in fixed if r["sampler"] == sampler and r["correlation"] >= target["correlation"]]
        reach[sampler] = {"both": min(ok) if ok else None, "correlation": min(corr) if corr else None}
    summary["passes_to_reach_target"] = reach
    return summary


def plot(path: str, rows: list[dict]) -> None:
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(r["model"] for r in rows))
    metrics = [m for m in ("correlation", "pointing", "insertion_auc") if any(m in r for r in rows)]
    colors = {s: f"C{i}" for i, s in enumerate(sx.masks.SAMPLERS)}
    fig = Figure(figsize=(4.4 * len(metrics), 3.6 * len(models)), constrained_layout=True)
    axes = fig.subplots(len(models), len(metrics), squeeze=False)
    for i, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model]
        counts = sorted({r["num_masks"] for r in mine if r["kind"] == "fixed_n"})
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            for sampler in dict.fromkeys(r["sampler"] for r in mine):
                pts = [(r["num_masks"], r[metric]) for r in mine if r["kind"] == "fixed_n" and r["sampler"] == sampler]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=sampler, color=colors.get(sampler))
                tol = [(r["passes"], r[metric]) for r in mine if r["kind"] == "tolerance" and r["sampler"] == sampler]
                if tol:
                    ax.scatter(*zip(*tol), marker="x", s=60, color=colors.get(sampler))
            target = [r[metric] for r in mine if r["kind"] == "fixed_n" and r["sampler"] == "iid"
                      and r["num_masks"] == FLAGS.target_masks]
            if target:
                ax.axhline(target[0], color="grey", linestyle="--", linewidth=1)
            ax.set_xscale("log")
            if counts:
                ax.set_xticks(counts, [str(c) for c in counts], rotation=45)
                ax.minorticks_off()
            ax.set_xlabel("passes per map (x: tolerance runs)", fontsize=9)
            ax.set_title(f"{model}: {metric}", fontsize=10)
            ax.grid(alpha=0.3)
        axes[i, 0].legend(fontsize=8)
        note = (f"{mine[0].get('description', model)}; {mine[0].get('pairs')} positive pairs; reference map: "
                f"{mine[0].get('reference_masks')} i.i.d. masks; dashed: i.i.d. at N = {FLAGS.target_masks}")
        axes[i, -1].set_title(f"{model}: {metrics[-1]}", fontsize=10)
        axes[i, 1 if len(metrics) > 1 else 0].set_title("\n".join(textwrap.wrap(note, 70)) + f"\n{model}: "
                                                        f"{metrics[1 if len(metrics) > 1 else 0]}", fontsize=8)
    fig.savefig(path, dpi=110)


def main(argv):
    del argv
    rows = []
    if FLAGS.plot_from:
        for path in FLAGS.plot_from.split(","):
            with open(path) as f:
                rows += [line for line in map(json.loads, f) if line["kind"] in ("fixed_n", "tolerance")]
        plot(FLAGS.plot, rows)
        return
    for name in [m.strip() for m in FLAGS.models.split(",") if m.strip()]:
        rows += run_model(name)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.writelines(json.dumps(line) + "\n" for line in _LINES)
    if FLAGS.plot:
        plot(FLAGS.plot, rows)


if __name__ == "__main__":
    app.run(main)
