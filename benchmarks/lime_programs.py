"""LIME over queries whose superpixel counts differ: one compiled program per count, or one per capacity.

    python -m benchmarks.lime_programs --model=small_cnn --image_size=64 --num_pairs=16

SLIC rarely gives its target count exactly, so the queries of a dataset have many superpixel
counts. ``explain_pairs("lime", ...)`` compiles one program per *capacity*
(``_lime.segment_capacity``: the smallest power of two at least the count and the target); it
compiled one per count before. Both variants run in this process, each from empty compilation
caches (the persistent cache off), alternating, ``--repeats`` times:

- ``per_count``: ``segment_capacity`` replaced by the count itself, which is the earlier
  behaviour (the same arithmetic on exactly S slots);
- ``capacity``: the library as it is.

For each: the seconds of the first call (compilation included) and of a second call (compiled),
the programs compiled, and whether the maps equal the other variant's bit for bit (the regression
over more slots can round differently: the largest difference over the largest map value is
given). Images: smooth random blobs (SLIC needs regions), one query and one reference per pair,
random weights.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

import simexplain_jax as sx
from benchmarks._common import define_model_flags, emit, machine, make_embed_fn, smooth_images
from simexplain_jax.saliency import _lime

FLAGS = flags.FLAGS
define_model_flags("small_cnn", 64, repeats=2, repeats_help="rounds of both variants (each from empty caches)")
flags.DEFINE_integer("num_pairs", 16, "pairs (each with its own query)")
flags.DEFINE_integer("num_samples", 200, "LIME samples per query")
flags.DEFINE_integer("num_segments", 50, "SLIC's target superpixel count")
flags.DEFINE_integer("batch_size", 100, "perturbations per compiled chunk")


def main(argv):
    del argv
    jax.config.update("jax_enable_compilation_cache", False)
    size, count = FLAGS.image_size, FLAGS.num_pairs
    embed = make_embed_fn(FLAGS.model, size)
    images = smooth_images(2 * count, size)
    pairs = np.stack([np.arange(count), count + np.arange(count)], axis=1)
    counts = [int(_lime.query_segments(images[q], FLAGS.num_segments).max()) + 1 for q in range(count)]
    config = dict(num_samples=FLAGS.num_samples, num_segments=FLAGS.num_segments, batch_size=FLAGS.batch_size)

    def call():
        return sx.saliency.explain_pairs("lime", embed, images, images, key=jax.random.key(0), pairs=pairs,
                                         config=config, segment_threads=0)

    capacity = _lime.segment_capacity
    variants = {"per_count": lambda count, target: count, "capacity": capacity}
    results: dict = {name: [] for name in variants}
    maps = {}
    for _ in range(FLAGS.repeats):
        for name, rule in variants.items():
            _lime.segment_capacity = rule
            try:
                jax.clear_caches()
                start = time.perf_counter()
                maps[name] = np.asarray(call())
                first = time.perf_counter() - start
                programs = sx.parallel._map_queries_jit._cache_size()
                start = time.perf_counter()
                call()
                second = time.perf_counter() - start
            finally:
                _lime.segment_capacity = capacity
            results[name].append(dict(first_call_s=first, second_call_s=second, programs=programs))
            emit(dict(measure=name, first_call_s=round(first, 2), second_call_s=round(second, 2), programs=programs))
    best = {name: min(r["first_call_s"] for r in runs) for name, runs in results.items()}
    emit(dict(measure="summary", model=FLAGS.model, image_size=size, num_pairs=count,
              superpixel_counts=sorted(set(counts)), first_call_ratio=round(best["per_count"] / best["capacity"], 2),
              same_maps=bool(np.array_equal(maps["per_count"], maps["capacity"])),
              max_relative_difference=float(np.abs(maps["per_count"] - maps["capacity"]).max()
                                            / np.abs(maps["per_count"]).max()), **config, **machine()))


if __name__ == "__main__":
    app.run(main)
