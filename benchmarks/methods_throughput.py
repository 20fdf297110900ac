"""Throughput of LIME and the meaningful-perturbation mask: one pair, and a batch of pairs.

    python -m benchmarks.methods_throughput --model=small_cnn --image_size=64 --num_pairs=16

Prints JSON lines: pairs per second for one pair and for ``num_pairs`` pairs (LIME through
``explain_pairs``, one query per pair; the mask method through one vmapped ``perturbation_batch``
call), and the batch/single throughput ratio. Best of ``--repeats`` after a warm-up call.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import app, flags

import simexplain_jax as sx
from benchmarks._common import define_model_flags, emit, machine, make_embed_fn, timed
from simexplain_jax.saliency import denormalize, superpixels

FLAGS = flags.FLAGS
define_model_flags("small_cnn", 64, repeats=2, repeats_help="timed calls after warm-up")
flags.DEFINE_integer("num_pairs", 16, "pairs in the batched measurement")
flags.DEFINE_integer("lime_samples", 1000, "LIME samples per query")
flags.DEFINE_integer("mask_steps", 500, "Adam steps of the mask method")
flags.DEFINE_integer("batch_size", 250, "perturbations per compiled chunk (LIME)")


def main(argv):
    del argv
    size, p = FLAGS.image_size, FLAGS.num_pairs
    embed = make_embed_fn(FLAGS.model, size)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2 * p, size, size, 3)).astype(np.float32)
    pairs = np.stack([np.arange(p), p + np.arange(p)], axis=1)
    refs = np.asarray(jax.jit(lambda f, x: f(x))(embed, images[p:]))
    config = dict(model=FLAGS.model, image_size=size, num_pairs=p, **machine())
    emit({"measure": "config", **config})
    key = jax.random.key(0)
    lime_options = dict(num_samples=FLAGS.lime_samples, num_segments=50, batch_size=FLAGS.batch_size)
    segments = superpixels(denormalize(images[0]))
    t_lime_one, _ = timed(sx.saliency.lime, embed, images[0], refs[0], key=key, segments=segments, **lime_options,
                          repeats=FLAGS.repeats)
    t_lime_all, _ = timed(sx.saliency.explain_pairs, "lime", embed, images, images, key=key, pairs=pairs,
                          config=lime_options, repeats=FLAGS.repeats)
    emit({"measure": "lime", "one_pair_seconds": t_lime_one, "one_pair_pairs_per_second": 1 / t_lime_one,
          "batch_seconds": t_lime_all, "batch_pairs_per_second": p / t_lime_all,
          "note": "one pair: segments precomputed; batch: SLIC per query included"})
    mask_options = dict(num_steps=FLAGS.mask_steps)
    t_mask_one, _ = timed(sx.saliency.perturbation_batch, embed, images[:1], refs[:1], key=key, **mask_options,
                          repeats=FLAGS.repeats)
    t_mask_all, _ = timed(sx.saliency.perturbation_batch, embed, images[:p], refs, key=key, **mask_options,
                          repeats=FLAGS.repeats)
    emit({"measure": "perturbation", "one_pair_seconds": t_mask_one, "one_pair_pairs_per_second": 1 / t_mask_one,
          "batch_seconds": t_mask_all, "batch_pairs_per_second": p / t_mask_all,
          "batch_speedup": (p / t_mask_all) / (1 / t_mask_one)})
    emit({"measure": "summary", **config, "lime_pairs_per_second_batch": round(p / t_lime_all, 3),
          "mask_pairs_per_second_one": round(1 / t_mask_one, 3), "mask_pairs_per_second_batch": round(p / t_mask_all, 3),
          "mask_batch_speedup": round(t_mask_one * p / t_mask_all, 2)})


if __name__ == "__main__":
    app.run(main)
