"""Throughput of sharded explain_pairs against the number of devices.

    python -m benchmarks.scaling --devices=1,2,4,8 --num_pairs=32
    python -m benchmarks.scaling --devices=1,8,8:8 --num_pairs=1 --num_masks=2000   # few pairs: split the masks

Each device count runs in a fresh process (on the CPU, with
``XLA_FLAGS=--xla_force_host_platform_device_count=D``: fake devices that share this machine's
cores, so the numbers show the sharding overhead, not a speed-up; on an accelerator host, the
real devices). ``D:M`` lays D devices out as a 2-D mesh with M of them on the ``masks`` axis
(RISE splits each query's masks over them). Prints JSON lines: pairs per second and the ratio to
the first layout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("devices", "1,2,4,8", "device counts, or D:M (D devices, M of them on the masks axis)")
flags.DEFINE_string("model", "small_cnn", "resnet18 or small_cnn")
flags.DEFINE_integer("image_size", 64, "image side")
flags.DEFINE_integer("num_pairs", 32, "pairs (one reference per query)")
flags.DEFINE_integer("num_masks", 500, "RISE masks per query")
flags.DEFINE_integer("count", 0, "internal: run one measurement with this many devices")

CHILD = """
import json, time, jax, numpy as np
import simexplain_jax as sx
from simexplain_jax import parallel
from benchmarks._common import make_embed_fn, machine
embed = make_embed_fn({model!r}, {size})
rng = np.random.default_rng(0)
images = rng.normal(size=({pairs} + 1, {size}, {size}, 3)).astype(np.float32)
pairs = np.stack([np.arange({pairs}), np.arange({pairs}) + 1], 1)
mesh = parallel.make_mesh({count}, masks={masks_axis})
run = lambda: sx.saliency.explain_pairs("rise", embed, images, images, key=jax.random.key(0), pairs=pairs,
                                        config=dict(num_masks={masks}, batch_size=250), mesh=mesh)
run()
start = time.perf_counter(); run(); seconds = time.perf_counter() - start
print(json.dumps(dict(devices={count}, masks_axis={masks_axis}, seconds=seconds, pairs_per_second={pairs} / seconds, **machine())))
"""


def main(argv):
    del argv
    results = []
    for layout in FLAGS.devices.split(","):
        count, _, masks_axis = layout.partition(":")
        count, masks_axis = int(count), int(masks_axis or 1)
        env = dict(os.environ)
        if "cuda" not in os.environ.get("JAX_PLATFORMS", "") and "gpu" not in os.environ.get("JAX_PLATFORMS", ""):
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
        code = CHILD.format(model=FLAGS.model, size=FLAGS.image_size, pairs=FLAGS.num_pairs, masks=FLAGS.num_masks,
                            count=count, masks_axis=masks_axis)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        record = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(record)
        record["ratio_to_first"] = record["pairs_per_second"] / results[0]["pairs_per_second"]
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    app.run(main)
