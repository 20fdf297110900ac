"""Training-loader throughput: ``make_loader`` against grain's plain pipeline on the same records.

    python -m benchmarks.loader_throughput --num_records=3000 --image_size=32 --batch_size=128

The plain pipeline is what ``make_loader`` was: grain's ``IndexSampler``, the preprocessing of
each record (normalised to float32), then ``Batch``. ``make_loader`` decodes each record to uint8,
normalises each batch and reads grain's order without IndexSampler's per-record random generator.
Both read an in-memory source of random uint8 images, shuffled, in this thread. Prints JSON lines:
milliseconds per batch of each (best of ``--repeats`` runs of ``--batches`` batches), their
ratio, and whether every batch was equal bit for bit; then the microseconds that grain's shuffle
takes per record index at ``--small_records`` records (a small folder of the user's images).
"""

from __future__ import annotations

import hashlib
import time

import grain
import numpy as np
from absl import app, flags

from benchmarks._common import emit, machine
from simexplain_jax.data.pipeline import Preprocess, make_loader
from simexplain_jax.data.sources import InMemorySource

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_records", 3000, "records in the source (shapes/32px's training split has 3000)")
flags.DEFINE_integer("image_size", 32, "image side in pixels")
flags.DEFINE_integer("batch_size", 128, "records per batch")
flags.DEFINE_integer("batches", 200, "batches read per timed run")
flags.DEFINE_integer("repeats", 3, "timed runs of each loader (best is kept)")
flags.DEFINE_integer("small_records", 40, "records of the small source whose shuffle cost is measured")


def plain_loader(source, preprocess, batch_size, seed):
    shard = grain.sharding.ShardOptions(shard_index=0, shard_count=1, drop_remainder=True)
    sampler = grain.samplers.IndexSampler(num_records=len(source), shard_options=shard, shuffle=True,
                                          num_epochs=None, seed=seed)
    return grain.DataLoader(data_source=source, sampler=sampler, worker_count=0,
                            operations=[preprocess, grain.transforms.Batch(batch_size, drop_remainder=True)],
                            read_options=grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))


def read(loader, batches):
    """Seconds to read ``batches`` batches, and a digest of their bytes."""
    digest, iterator = hashlib.sha256(), iter(loader)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        for key in sorted(batch):
            digest.update(np.ascontiguousarray(batch[key]).tobytes())
    return time.perf_counter() - start, digest.hexdigest()


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    size, n = FLAGS.image_size, FLAGS.num_records
    source = InMemorySource({"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                             "label": rng.integers(0, 20, n)})
    preprocess = Preprocess(keys=("label",))
    config = dict(num_records=n, image_size=size, batch_size=FLAGS.batch_size, batches=FLAGS.batches, **machine())
    emit({"measure": "config", **config})
    loaders = {"grain_index_sampler_per_record": lambda: plain_loader(source, preprocess, FLAGS.batch_size, 0),
               "make_loader": lambda: make_loader(source, batch_size=FLAGS.batch_size, preprocess=preprocess, seed=0,
                                                  num_epochs=None, drop_remainder=True, shard_index=0, shard_count=1)}
    best, digests = {}, {}
    for name, build in loaders.items():
        runs = [read(build(), FLAGS.batches) for _ in range(FLAGS.repeats)]
        best[name] = min(seconds for seconds, _ in runs)
        digests[name] = {digest for _, digest in runs}
        emit({"measure": name, "ms_per_batch": 1e3 * best[name] / FLAGS.batches,
              "us_per_record": 1e6 * best[name] / (FLAGS.batches * FLAGS.batch_size)})
    emit({"measure": "summary", **config, "speedup": round(best["grain_index_sampler_per_record"] / best["make_loader"], 2),
          "same_batches": len(set.union(*digests.values())) == 1})
    # grain's shuffle, per record index, on a large and a small source
    for records in (n, FLAGS.small_records):
        keys = grain.MapDataset.range(records).shuffle(seed=0)
        count = max(records, 200)
        start = time.perf_counter()
        for i in range(count):
            keys[i]
        emit({"measure": "grain_shuffle_index", "records": records,
              "us_per_index": round(1e6 * (time.perf_counter() - start) / count, 1)})


if __name__ == "__main__":
    app.run(main)
