"""Saliency throughput: the engine against its floor and against the reference code's way.

Prints JSON lines (one per measurement, then a summary with the ratios). Run:

    python -m benchmarks.saliency_throughput --model=resnet18 --image_size=112 --num_masks=2000

Measures, in one process and on the same compiled model:
  (a) floor: embedding N images in plain batches of the same size (a Python loop over a jitted
      batch call, and one jitted lax.map over all batches; the faster is the floor);
  (b) sx.saliency.rise for one pair (masks generated on device from a key);
  (c) the reference code's way: masks made on the host with NumPy/scikit-image in a Python loop,
      multiplied on the host, then a Python loop over batches and the map on the host;
  (d) rise with K references at once against K single-reference calls (K x (b), measured time
      of (b) multiplied: say so);
  (e) rise_variable with K' reference masks against the reference's approach (the masked
      queries re-embedded for every masked reference; a few measured, extrapolated to K');
  (f) peak resident memory of a fresh process running rise at N and 4N masks (--memory).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

from absl import app, flags

import jax
import jax.numpy as jnp
import numpy as np

import simexplain_jax as sx
from benchmarks._common import current_rss_mb, define_model_flags, emit, machine, make_embed_fn, peak_rss_mb, reset_peak_rss, timed

FLAGS = flags.FLAGS
define_model_flags("resnet18", 112, repeats=2, repeats_help="timed calls after warm-up (best is kept)")
flags.DEFINE_integer("num_masks", 2000, "N")
flags.DEFINE_integer("batch_size", 250, "masks per chunk / images per batch")
flags.DEFINE_integer("num_references", 20, "K for the multi-reference measurement")
flags.DEFINE_integer("num_reference_masks", 30, "K' for the variable-reference measurement")
flags.DEFINE_integer("reference_runs", 2, "reference-approach runs actually measured for (e)")
flags.DEFINE_bool("reference_loop", True, "measure (c)")
flags.DEFINE_bool("memory", True, "measure (f) in subprocesses")
flags.DEFINE_string("only", "", "internal: 'memory' runs one rise call and prints peak RSS")


@jax.jit
def _embed_batch(embed, images):
    return embed(images)


def floor_python_loop(embed, images, batch_size):
    outs = [_embed_batch(embed, images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)]
    return jnp.concatenate(outs)


@jax.jit
def _floor_scan(embed, stacked):
    return jax.lax.map(embed, stacked)


def floor_scan(embed, stacked):
    return _floor_scan(embed, stacked)


def model_flops_per_image(embed, size, batch_size):
    """XLA's count of the model's floating-point operations per image (forward pass), from the
    lowered HLO (compiled GPU programs hide convolutions in library calls that count 0)."""
    analysis = _embed_batch.lower(embed, jnp.zeros((batch_size, size, size, 3))).cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan"))) / batch_size if analysis else float("nan")


def reference_style_masks(num_masks, grid_size, p, size, seed=0):
    """The original RISE generate_masks: a Python loop with scikit-image resize, on the host."""
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    cell = math.ceil(size / grid_size)
    up = (grid_size + 1) * cell
    grid = (rng.random((num_masks, grid_size, grid_size)) < p).astype(np.float32)
    masks = np.empty((num_masks, size, size), np.float32)
    for i in range(num_masks):
        x, y = rng.integers(0, cell, 2)
        masks[i] = resize(grid[i], (up, up), order=1, mode="reflect", anti_aliasing=False)[x:x + size, y:y + size]
    return masks


def reference_style_rise(embed, query, reference_embedding, masks, batch_size):
    """Host masking, a Python loop over batches, cosine and the map on the host."""
    stack = masks[..., None] * np.asarray(query)[None]
    embeddings = np.concatenate([np.asarray(_embed_batch(embed, jnp.asarray(stack[i:i + batch_size])))
                                 for i in range(0, masks.shape[0], batch_size)])
    ref = np.asarray(reference_embedding)
    scores = embeddings @ ref / np.maximum(np.linalg.norm(embeddings, axis=1) * np.linalg.norm(ref), 1e-12)
    sal = scores @ masks.reshape(masks.shape[0], -1)
    return (sal / masks.sum(0).reshape(-1) * masks.shape[0]).reshape(masks.shape[1:])


def memory_only():
    embed = make_embed_fn(FLAGS.model, FLAGS.image_size)
    query = jax.random.normal(jax.random.key(1), (FLAGS.image_size, FLAGS.image_size, 3))
    ref = jax.random.normal(jax.random.key(2), (64,))
    jax.block_until_ready((query, ref))
    base = current_rss_mb()
    reset = reset_peak_rss()
    jax.block_until_ready(sx.saliency.rise(embed, query, ref, key=jax.random.key(0), num_masks=FLAGS.num_masks,
                                           batch_size=FLAGS.batch_size).maps)
    stats = jax.devices()[0].memory_stats() or {}
    emit({"measure": "memory", "num_masks": FLAGS.num_masks, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": base, "peak_was_reset": reset,
          "device_peak_mb": stats.get("peak_bytes_in_use", 0) / 2**20 or None})


def run_memory(num_masks):
    cmd = [sys.executable, "-m", "benchmarks.saliency_throughput", "--only=memory", f"--num_masks={num_masks}",
           f"--model={FLAGS.model}", f"--image_size={FLAGS.image_size}", f"--batch_size={FLAGS.batch_size}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ)).stdout
    import json

    record = json.loads(out.strip().splitlines()[-1])
    emit(record)
    return record["device_peak_mb"] or record["peak_rss_mb"]


def main(argv):
    del argv
    if FLAGS.only == "memory":
        return memory_only()
    n, b, size = FLAGS.num_masks, FLAGS.batch_size, FLAGS.image_size
    config = dict(model=FLAGS.model, image_size=size, num_masks=n, batch_size=b, **machine())
    emit({"measure": "config", **config})
    embed = make_embed_fn(FLAGS.model, size)
    query = jax.random.normal(jax.random.key(1), (size, size, 3))
    reference = jax.random.normal(jax.random.key(2), (size, size, 3))
    ref_embedding = _embed_batch(embed, reference[None])[0]
    summary = {}

    def record(name, seconds, images, **extra):
        rec = {"measure": name, "seconds": round(seconds, 4), "images_per_second": round(images / seconds, 1), **extra}
        emit(rec)
        summary[name] = seconds

    # (a) floor
    images = sx.masks.rise_masks((size, size), key=jax.random.key(0), num_masks=n)[..., None] * query[None]
    images = jax.block_until_ready(images)
    t_loop, _ = timed(floor_python_loop, embed, images, b, repeats=FLAGS.repeats)
    record("floor_python_loop", t_loop, n)
    chunks = -(-n // b)
    stacked = jnp.pad(images, [(0, chunks * b - n), (0, 0), (0, 0), (0, 0)]).reshape(chunks, b, size, size, 3)
    del images
    t_scan, _ = timed(floor_scan, embed, stacked, repeats=FLAGS.repeats)
    record("floor_lax_map", t_scan, chunks * b)
    del stacked
    floor = min(t_loop, t_scan)
    flops_per_image = model_flops_per_image(embed, size, b)

    # (b) rise, one pair
    key = jax.random.key(0)
    t_rise, _ = timed(sx.saliency.rise, embed, query, ref_embedding, key=key, num_masks=n, batch_size=b,
                      repeats=FLAGS.repeats)
    record("rise_one_reference", t_rise, n)

    # (c) the reference code's way
    if FLAGS.reference_loop:
        start = time.perf_counter()
        host_masks = reference_style_masks(n, 8, 0.5, size)
        t_masks = time.perf_counter() - start
        t_ref, _ = timed(reference_style_rise, embed, query, ref_embedding, host_masks, b, repeats=FLAGS.repeats)
        del host_masks
        record("reference_loop_mask_generation", t_masks, n)
        record("reference_loop_rise", t_ref, n, note="masks precomputed (excluded)")
        summary["reference_loop_total"] = t_masks + t_ref

    # (d) K references at once
    k = FLAGS.num_references
    refs = jax.random.normal(jax.random.key(3), (k, ref_embedding.shape[0]))
    t_multi, _ = timed(sx.saliency.rise, embed, query, refs, key=key, num_masks=n, batch_size=b, repeats=FLAGS.repeats)
    record("rise_k_references", t_multi, n, num_references=k)

    # (e) variable reference
    kv = FLAGS.num_reference_masks
    t_var, _ = timed(sx.saliency.rise_variable, embed, query, reference, key=key, num_masks=n,
                     num_reference_masks=kv, batch_size=b, repeats=FLAGS.repeats)
    record("rise_variable", t_var, n + kv, num_reference_masks=kv)
    ref_masks = sx.masks.rise_masks((size, size), key=jax.random.key(4), num_masks=kv)

    def reference_variable(runs):
        maps = []
        for j in range(runs):  # the reference: embed the masked reference, then N masked queries again
            r = _embed_batch(embed, (reference * ref_masks[j][..., None])[None])[0]
            maps.append(sx.saliency.rise(embed, query, r, key=key, num_masks=n, batch_size=b).maps)
        return jnp.mean(jnp.stack(maps), 0)

    runs = FLAGS.reference_runs
    t_refvar, _ = timed(reference_variable, runs, repeats=1)
    record("reference_variable_measured", t_refvar, runs * (n + 1), runs=runs)
    summary["reference_variable_extrapolated"] = t_refvar * kv / runs

    ratios = {
        "rise_over_floor": t_rise / floor,
        "rise_over_reference_loop": t_rise / summary["reference_loop_rise"] if FLAGS.reference_loop else None,
        "reference_loop_total_over_rise": summary["reference_loop_total"] / t_rise if FLAGS.reference_loop else None,
        "k_references_over_one": t_multi / t_rise,
        "k_separate_runs_over_k_at_once": k * t_rise / t_multi,
        "variable_over_fixed": t_var / t_rise,
        "reference_variable_over_variable": summary["reference_variable_extrapolated"] / t_var,
    }
    if FLAGS.memory:
        small, large = run_memory(n), run_memory(4 * n)
        ratios["peak_memory_4n_over_n"] = large / small  # device memory on accelerators, else RSS
    emit({"measure": "summary", **config, "floor_seconds": round(floor, 3),
          "model_gflop_per_image": round(flops_per_image / 1e9, 3),
          "rise_achieved_tflops": round(flops_per_image * n / t_rise / 1e12, 3),
          "floor_images_per_second": round(n / floor, 1),
          "notes": "k_separate_runs = K x measured single-reference time; reference_variable extrapolated "
                   f"from {runs} measured runs (each N forward passes with this library's rise) to K'={kv}",
          **{name: (round(v, 3) if v is not None else None) for name, v in ratios.items()}})


if __name__ == "__main__":
    app.run(main)
