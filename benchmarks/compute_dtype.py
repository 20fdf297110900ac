"""float32 against bfloat16: the embedding floor and RISE for one pair, measured in one run.

    python -m benchmarks.compute_dtype --model=resnet18 --image_size=112 --num_masks=500

For each compute dtype: the floor (the model's plain batched forward pass in that dtype, one jitted
``lax.map`` over batches of ``--batch_size``; parameters cast beforehand) and
``sx.saliency.rise(..., compute_dtype=...)`` for one pair. The variants are interleaved over
``--rounds`` rounds (best of each kept), so load changes on a shared machine hit them alike.
The summary gives bfloat16 / float32 speed ratios (> 1: bfloat16 is faster) and the FLOP rate
from XLA's count of one forward pass.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import app, flags

import simexplain_jax as sx
from benchmarks._common import define_model_flags, emit, machine, make_embed_fn
from simexplain_jax import engine

FLAGS = flags.FLAGS
define_model_flags("resnet18", 112)
flags.DEFINE_integer("num_masks", 500, "N (RISE masks, and images of the floor)")
flags.DEFINE_integer("batch_size", 250, "masks per chunk / images per batch")
flags.DEFINE_integer("rounds", 3, "interleaved rounds (best of each variant is kept)")


@jax.jit
def _floor(embed, stacked):
    return jax.lax.map(embed, stacked)


def flops_per_image(embed, size, batch):
    cost = jax.jit(lambda f, x: f(x)).lower(embed, jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32))
    cost = cost.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", float("nan"))) / batch


def main(argv):
    del argv
    size, n, b = FLAGS.image_size, FLAGS.num_masks, FLAGS.batch_size
    embed = make_embed_fn(FLAGS.model, size)
    config = dict(model=FLAGS.model, image_size=size, num_masks=n, batch_size=b, **machine())
    emit({"measure": "config", **config})
    query = jax.random.normal(jax.random.key(1), (size, size, 3))
    reference = jax.random.normal(jax.random.key(2), (64,))
    chunks = -(-n // b)
    stacked = sx.masks.rise_masks((size, size), key=jax.random.key(0), num_masks=chunks * b)[..., None] * query[None]
    stacked = jax.block_until_ready(stacked.reshape(chunks, b, size, size, 3))
    key = jax.random.key(0)
    forwards = {dtype: engine.in_compute_dtype(embed, dtype) for dtype in ("float32", "bfloat16")}
    variants = {}
    for dtype, forward in forwards.items():
        variants[f"floor_{dtype}"] = (lambda forward=forward: _floor(forward, stacked), chunks * b)
        variants[f"rise_{dtype}"] = (lambda dtype=dtype: sx.saliency.rise(
            embed, query, reference, key=key, num_masks=n, batch_size=b, compute_dtype=dtype).maps, n)
    for fn, _ in variants.values():
        jax.block_until_ready(fn())  # compile
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(FLAGS.rounds):
        for name, (fn, _) in variants.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - start)
    flops = {dtype: flops_per_image(forward, size, b) for dtype, forward in forwards.items()}
    for name, (_, images) in variants.items():
        dtype = name.split("_", 1)[1]
        emit({"measure": name, "seconds": round(best[name], 4), "images_per_second": round(images / best[name], 1),
              "achieved_tflops": round(flops[dtype] * images / best[name] / 1e12, 4)})
    emit({"measure": "summary", **config, "model_gflop_per_image": round(flops["float32"] / 1e9, 4),
          "floor_bfloat16_speed_over_float32": round(best["floor_float32"] / best["floor_bfloat16"], 3),
          "rise_bfloat16_speed_over_float32": round(best["rise_float32"] / best["rise_bfloat16"], 3),
          "rise_over_floor_float32": round(best["rise_float32"] / best["floor_float32"], 3),
          "rise_over_floor_bfloat16": round(best["rise_bfloat16"] / best["floor_bfloat16"], 3)})


if __name__ == "__main__":
    app.run(main)
