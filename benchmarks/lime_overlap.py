"""LIME over many pairs: SLIC segmentation on the host, serial or overlapped with the device work.

    python -m benchmarks.lime_overlap --model=small_cnn --image_size=64 --num_pairs=32

``explain_pairs("lime", ...)`` segments each query with scikit-image's SLIC on the host. Measured in
one process, on the same compiled programs (a warm-up call compiles one program per superpixel
capacity first), best of ``--repeats``:

- ``segmentation_serial`` / ``segmentation_threads``: SLIC alone for every query, in a loop and in
  ``--threads`` host threads;
- ``lime_serial``: ``explain_pairs(..., segment_threads=0)``: each query segmented in the calling
  thread when its turn comes (the host and the device take turns);
- ``lime_overlapped``: ``segment_threads=--threads``: SLIC runs ahead in host threads while the
  device works;
- ``lime_device_only``: the same call with the segmentation replaced by a lookup of the
  precomputed superpixels (a stub in place of ``_lime.query_segments``): the rate without host work.

The summary gives each rate over the device-only rate (the issue's target: overlapped >= 0.8 on
a GPU). Images: smooth random blobs (SLIC needs regions; pixel noise gives one superpixel), one
query and one reference per pair, random weights.
"""

from __future__ import annotations

import concurrent.futures
import time

import jax
import numpy as np
from absl import app, flags

import simexplain_jax as sx
from benchmarks._common import define_model_flags, emit, machine, make_embed_fn, smooth_images
from simexplain_jax.saliency import _lime

FLAGS = flags.FLAGS
define_model_flags("small_cnn", 64, repeats=3,
                   repeats_help="rounds of timed calls after warm-up (best of each variant is kept)")
flags.DEFINE_integer("num_pairs", 32, "pairs (each with its own query)")
flags.DEFINE_integer("num_samples", 1000, "LIME samples per query")
flags.DEFINE_integer("num_segments", 50, "SLIC's target superpixel count")
flags.DEFINE_integer("batch_size", 250, "perturbations per compiled chunk")
flags.DEFINE_integer("threads", 8, "segmentation threads of the overlapped variant")
flags.DEFINE_string("compute_dtype", "float32", "float32 or bfloat16")


def best_of(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv):
    del argv
    size, p = FLAGS.image_size, FLAGS.num_pairs
    embed = make_embed_fn(FLAGS.model, size)
    images = smooth_images(2 * p, size)
    pairs = np.stack([np.arange(p), p + np.arange(p)], axis=1)
    key = jax.random.key(0)
    config = dict(num_samples=FLAGS.num_samples, num_segments=FLAGS.num_segments, batch_size=FLAGS.batch_size,
                  compute_dtype=FLAGS.compute_dtype)
    setup = dict(model=FLAGS.model, image_size=size, num_pairs=p, threads=FLAGS.threads, **config, **machine())
    emit({"measure": "config", **setup})

    def segment(q):
        return _lime.query_segments(images[q], FLAGS.num_segments)

    t_seg = best_of(lambda: [segment(q) for q in range(p)], FLAGS.repeats)
    with concurrent.futures.ThreadPoolExecutor(FLAGS.threads) as pool:
        t_seg_threads = best_of(lambda: list(pool.map(segment, range(p))), FLAGS.repeats)
    segments = {images[q].tobytes(): segment(q) for q in range(p)}
    counts = sorted({int(s.max()) + 1 for s in segments.values()})
    emit({"measure": "segmentation", "serial_seconds": round(t_seg, 4), "threads_seconds": round(t_seg_threads, 4),
          "threads_speedup": round(t_seg / t_seg_threads, 3), "superpixel_counts": counts})

    def run(threads):
        return sx.saliency.explain_pairs("lime", embed, images, images, key=key, pairs=pairs, config=config,
                                         segment_threads=threads)

    def lookup(query, num_segments=50, segmentation_image=None):
        return segments[np.asarray(query).tobytes()]

    def device_only():
        original, _lime.query_segments = _lime.query_segments, lookup
        try:
            return run(0)
        finally:
            _lime.query_segments = original

    reference = run(0)  # warm-up: compiles one program per superpixel capacity
    variants = {"serial": lambda: run(0), "overlapped": lambda: run(FLAGS.threads), "device_only": device_only}
    same = all(np.array_equal(fn(), reference) for fn in variants.values())
    times = {name: [] for name in variants}
    for _ in range(FLAGS.repeats):  # rounds interleave the variants, so load changes hit them alike
        for name, fn in variants.items():
            times[name].append(best_of(fn, 1))
    t_serial, t_overlap, t_device = (min(times[name]) for name in ("serial", "overlapped", "device_only"))
    rates = {name: p / t for name, t in (("serial", t_serial), ("overlapped", t_overlap), ("device_only", t_device))}
    for name, t in (("serial", t_serial), ("overlapped", t_overlap), ("device_only", t_device)):
        emit({"measure": f"lime_{name}", "seconds": round(t, 4), "pairs_per_second": round(p / t, 3),
              "every_round_seconds": [round(x, 3) for x in times[name]]})
    emit({"measure": "summary", **setup, "maps_identical": same,
          **{f"{k}_pairs_per_second": round(v, 3) for k, v in rates.items()},
          "serial_over_device_only": round(rates["serial"] / rates["device_only"], 3),
          "overlapped_over_device_only": round(rates["overlapped"] / rates["device_only"], 3),
          "overlapped_over_serial": round(rates["overlapped"] / rates["serial"], 3),
          "segmentation_share_of_serial": round(t_seg / t_serial, 3)})


if __name__ == "__main__":
    app.run(main)
