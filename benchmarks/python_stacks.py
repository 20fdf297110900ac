"""One fixed workload for comparing Python/JAX stacks (run it once per venv; see python_stacks.sh).

Prints JSON lines: the stack (Python, jax, jaxlib, flax, numpy versions), then the model's plain
batched forward pass over N images (the floor: the faster of a Python loop over a jitted batch
call and one jitted lax.map) and ``sx.saliency.rise`` for one pair with N masks. Defaults: the
paper's backbone (ResNet-18 cut after layer3, random weights), 112 px, N = 500, batch 250, best
of 3 timed calls after a warm-up call. The flags are those of ``saliency_throughput`` (this
script reuses its floor functions); only the defaults differ.

    python -m benchmarks.python_stacks
    python -m benchmarks.python_stacks --summarize=results.jsonl   # markdown table of a driver run
"""

from __future__ import annotations

import importlib.metadata
import json
import os

from absl import app, flags

import jax
import jax.numpy as jnp

import simexplain_jax as sx
from benchmarks._common import emit, machine, make_embed_fn, timed
from benchmarks.saliency_throughput import _embed_batch, floor_python_loop, floor_scan

FLAGS = flags.FLAGS
flags.DEFINE_string("summarize", "", "a JSON-lines file written by python_stacks.sh: print the table and stop")
for _name, _value in (("num_masks", 500), ("batch_size", 250), ("repeats", 3)):
    FLAGS.set_default(_name, _value)


def versions() -> dict:
    out = {}
    for package in ("jax", "jaxlib", "flax", "numpy"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def measure():
    n, b, size = FLAGS.num_masks, FLAGS.batch_size, FLAGS.image_size
    emit({"measure": "stack", "model": FLAGS.model, "image_size": size, "num_masks": n, "batch_size": b,
          "repeats": FLAGS.repeats, **machine(), **versions(), "load_1min": os.getloadavg()[0]})
    embed = make_embed_fn(FLAGS.model, size)
    query = jax.random.normal(jax.random.key(1), (size, size, 3))
    ref_embedding = _embed_batch(embed, jax.random.normal(jax.random.key(2), (1, size, size, 3)))[0]

    images = sx.masks.rise_masks((size, size), key=jax.random.key(0), num_masks=n)[..., None] * query[None]
    images = jax.block_until_ready(images)
    t_loop, _ = timed(floor_python_loop, embed, images, b, repeats=FLAGS.repeats)
    chunks = -(-n // b)
    stacked = jnp.pad(images, [(0, chunks * b - n), (0, 0), (0, 0), (0, 0)]).reshape(chunks, b, size, size, 3)
    del images
    t_scan, _ = timed(floor_scan, embed, stacked, repeats=FLAGS.repeats)
    del stacked
    t_floor = min(t_loop, t_scan * n / (chunks * b))
    emit({"measure": "floor", "seconds": round(t_floor, 4), "images_per_second": round(n / t_floor, 1),
          "python_loop_seconds": round(t_loop, 4), "lax_map_seconds": round(t_scan, 4)})
    t_rise, _ = timed(sx.saliency.rise, embed, query, ref_embedding, key=jax.random.key(0), num_masks=n,
                      batch_size=b, repeats=FLAGS.repeats)
    emit({"measure": "rise_one_reference", "seconds": round(t_rise, 4), "images_per_second": round(n / t_rise, 1),
          "load_1min": os.getloadavg()[0]})


def summarize(path: str) -> None:
    """Markdown table, one column per stack (in order of first appearance), and the speed-up over the
    first. A stack run more than once (the driver's rounds) keeps its best time of each measurement."""
    stacks, current = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if record["measure"] == "stack":
                current = stacks.setdefault(f"Python {record['python']}, jax {record['jax']}", {"runs": 0})
                current["runs"] += 1
            elif current is not None:
                best = current.get(record["measure"], float("inf"))
                current[record["measure"]] = min(best, record["seconds"])
    if not stacks:
        raise ValueError(f"no stack records in {path}")
    names, columns = list(stacks), list(stacks.values())
    print("| measurement | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for measure, label in (("floor", "floor: plain batched forward, seconds"),
                           ("rise_one_reference", "`sx.saliency.rise`, one pair: seconds")):
        print(f"| {label} | " + " | ".join(f"{c[measure]:.3f}" for c in columns) + " |")
        print("| speed-up over the first column | "
              + " | ".join(f"{columns[0][measure] / c[measure]:.2f}" for c in columns) + " |")
    print("| runs per stack (best kept) | " + " | ".join(str(c["runs"]) for c in columns) + " |")


def main(argv):
    del argv
    if FLAGS.summarize:
        return summarize(FLAGS.summarize)
    measure()


if __name__ == "__main__":
    app.run(main)
