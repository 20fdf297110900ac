"""How much ``compute_dtype="bfloat16"`` changes the maps and the Table 1 metrics of a trained model.

    python -m experiments.train_similarity --config=experiments/configs/similarity_shapes.py:runlocal \
        --workdir=/tmp/sim --config.data_dir=/tmp/tfds
    python -m benchmarks.bfloat16_agreement --similarity_workdir=/tmp/sim --data_dir=/tmp/tfds --num_pairs=64

For the positive pairs of ``--num_pairs`` balanced shapes test pairs, every method's maps are made in
float32 and in bfloat16 (``explain_pairs``, same key), and each set is scored as Table 1 scores it
(insertion/deletion with the embedding in the same dtype; pointing game and mass on the key object).
Prints one JSON line per method: the per-map Pearson correlation of bfloat16 with float32 (minimum
and median), pointing hits that flip, the mass-on-key change, and the insertion/deletion AUC change
(x100 as the paper reports it) of the mean over pairs and of the worst pair; ``metric_only`` rows
score the float32 maps with a bfloat16 forward pass (the metric's own share of the change).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import app, flags

import simexplain_jax as sx
from benchmarks._common import emit, machine
from simexplain_jax import engine
from simexplain_jax.imageops import normalize_images, normalized_color
from simexplain_jax.models import embed_fn
from simexplain_jax.data.datasets import explanation_pairs
from simexplain_jax.models.loading import load_trained

FLAGS = flags.FLAGS
flags.DEFINE_string("similarity_workdir", None, "an experiments.train_similarity workdir")
flags.DEFINE_string("data_dir", None, "the TFDS folder it was trained from")
flags.DEFINE_integer("num_pairs", 64, "balanced test pairs (the positive half is explained)")
flags.DEFINE_integer("insertion_steps", 101, "points per insertion / deletion curve")
flags.mark_flags_as_required(["similarity_workdir", "data_dir"])

METHODS = {
    "rise": dict(num_masks=2000, grid_size=8, batch_size=250),
    "sliding_window": dict(window=16, stride=3, padding=4),  # the shapes config's geometry
    "lime": dict(num_samples=1000, num_segments=40),
    "perturbation": dict(num_steps=300),
    "gradient": {},
    "integrated_gradients": dict(num_steps=32),
}


def main(argv):
    del argv
    model, variables, config = load_trained(os.path.join(FLAGS.similarity_workdir, "checkpoints"))
    with open(os.path.join(FLAGS.similarity_workdir, "checkpoints", "config.json")) as f:
        dataset = json.load(f)["dataset"]
    data = explanation_pairs(dataset, data_dir=FLAGS.data_dir, num_pairs=FLAGS.num_pairs, seed=0)
    images = normalize_images(data.images)
    pairs = data.pairs[data.labels == 1]
    full_fn = embed_fn(model, variables)
    half_fn = engine.in_compute_dtype(full_fn, "bfloat16")
    background = normalized_color(127)
    emit({"measure": "config", "dataset": dataset, "model": config["model"], "positive_pairs": len(pairs),
          "methods": METHODS, **machine()})
    key = jax.random.key(0)

    def score(fn, maps, dtype):
        refs = engine.apply_in_chunks(fn, images[pairs[:, 1]])
        result = sx.metrics.insertion_deletion_batch(fn, images[pairs[:, 0]], refs, maps, background=background,
                                                     num_steps=FLAGS.insertion_steps, compute_dtype=dtype)
        points = [sx.metrics.pointing(m, data.key_masks[q]) for m, q in zip(maps, pairs[:, 0])]
        return (100 * result.insertion_auc, 100 * result.deletion_auc, np.array([p.hit for p in points]),
                np.array([p.mass_on_key for p in points]))

    def compare(name, full, half):
        ins_f, del_f, hit_f, mass_f = full
        ins_h, del_h, hit_h, mass_h = half
        return {"measure": name,
                "insertion_auc_float32": round(float(ins_f.mean()), 2),
                "insertion_auc_bfloat16": round(float(ins_h.mean()), 2),
                "deletion_auc_float32": round(float(del_f.mean()), 2),
                "deletion_auc_bfloat16": round(float(del_h.mean()), 2),
                "mean_insertion_change": round(float(abs(ins_h.mean() - ins_f.mean())), 3),
                "mean_deletion_change": round(float(abs(del_h.mean() - del_f.mean())), 3),
                "worst_pair_insertion_change": round(float(np.abs(ins_h - ins_f).max()), 2),
                "worst_pair_deletion_change": round(float(np.abs(del_h - del_f).max()), 2),
                "pointing_float32": round(float(hit_f.mean()), 3), "pointing_bfloat16": round(float(hit_h.mean()), 3),
                "pointing_flips": int((hit_f != hit_h).sum()),
                "max_mass_on_key_change": round(float(np.abs(mass_h - mass_f).max()), 4)}

    for method, options in METHODS.items():
        full = sx.saliency.explain_pairs(method, full_fn, images, images, key=key, pairs=pairs, config=options)
        half = sx.saliency.explain_pairs(method, full_fn, images, images, key=key, pairs=pairs,
                                         config={**options, "compute_dtype": "bfloat16"})
        corr = np.array([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(full, half)])
        full_scores = score(full_fn, full, "float32")
        record = compare(method, full_scores, score(half_fn, half, "bfloat16"))
        emit({**record, "map_correlation_min": round(float(corr.min()), 5),
              "map_correlation_median": round(float(np.median(corr)), 5)})
        emit(compare(f"{method}_metric_only", full_scores, score(half_fn, full, "bfloat16")))


if __name__ == "__main__":
    app.run(main)
