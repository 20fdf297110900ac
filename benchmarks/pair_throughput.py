"""Pairs per second of the second-order methods against first-order RISE.

    python -m benchmarks.pair_throughput --model=small_cnn --image_size=64 --num_pairs=16

Prints JSON lines: for each method its pairs/s over ``num_pairs`` pairs (best of ``--repeats``
calls after a warm-up call, compiled, ``block_until_ready``), the passes per pair it reports
(the integrated cross-Jacobian counts vector-Jacobian products), and its
speed relative to first-order RISE at N = ``--rise_masks`` in the same run. Random weights
(with random batch-norm statistics): the cost does not depend on them.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import app, flags

import simexplain_jax as sx
from benchmarks._common import define_model_flags, emit, machine, make_model, smooth_images, timed
from simexplain_jax.models import embed_fn
from simexplain_jax.saliency import integrated_cross_jacobian, pooled_pair, rise_pair

FLAGS = flags.FLAGS
define_model_flags("small_cnn", 64, repeats=2, repeats_help="timed calls after warm-up")
flags.DEFINE_integer("num_pairs", 16, "pairs per measured call")
flags.DEFINE_integer("rise_masks", 2000, "N of first-order RISE (the reference row)")
flags.DEFINE_list("pair_masks", ["250", "500"], "N per image of rise_pair (2N passes per pair)")
flags.DEFINE_integer("cross_jacobian_steps", 8, "path points of the integrated cross-Jacobian")
flags.DEFINE_integer("grid_size", 8, "cells per side of the black-box correspondences")
flags.DEFINE_integer("batch_size", 256, "perturbations per compiled chunk")


def main(argv):
    del argv
    size, count = FLAGS.image_size, FLAGS.num_pairs
    net, variables = make_model(FLAGS.model, size)
    embed = embed_fn(net, variables)
    images = smooth_images(2 * count, size)
    queries, references = images[:count], images[count:]
    key = jax.random.key(0)
    emit({"measure": "config", "model": FLAGS.model, "image_size": size, "num_pairs": count, **machine()})
    rows = []

    def measure(name, passes, fn, *args, **kwargs):
        seconds, out = timed(fn, *args, repeats=FLAGS.repeats, **kwargs)
        passes = getattr(out, "passes", passes)  # the second-order methods report what they spent
        rows.append({"method": name, "pairs_per_second": count / seconds, "passes_per_pair": int(passes)})

    pairs = np.stack([np.arange(count), np.arange(count)], axis=1)
    measure(f"rise N={FLAGS.rise_masks}", FLAGS.rise_masks, sx.saliency.explain_pairs, "rise", embed, queries,
            references, key=key, pairs=pairs,
            config=dict(num_masks=FLAGS.rise_masks, batch_size=FLAGS.batch_size))
    measure("pooled_pair", None, pooled_pair, net, variables, queries, references)
    for n in (int(v) for v in FLAGS.pair_masks):
        measure(f"rise_pair N={n}", None, rise_pair, embed, queries, references, key=key, num_masks=n,
                grid_size=FLAGS.grid_size, batch_size=min(FLAGS.batch_size, n))
    steps = FLAGS.cross_jacobian_steps
    measure(f"integrated_cross_jacobian steps={steps}", None, integrated_cross_jacobian, embed, queries,
            references, num_steps=steps, grid_size=FLAGS.grid_size)
    base = rows[0]["pairs_per_second"]
    for row in rows:
        emit({"measure": "pairs", **row, "vs_rise": row["pairs_per_second"] / base})


if __name__ == "__main__":
    app.run(main)
