"""The main job: explain matched pairs with RISE and sliding window, score the maps, draw them.

    python -m experiments.sane --config=experiments/configs/sane_shapes.py --workdir=workdir/demo

Writes to the workdir: results.json (per pair and mean insertion/deletion AUC x100 per method,
seconds per pair), results.md (the same as a table) and pairs.png (query, reference, overlays).
This version explains an untrained small CNN on positive pairs (same class) of the shapes
benchmark's test split, built into ``config.data_dir`` (default ``<workdir>/tfds``) on first use;
later versions train the model first.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

import simexplain_jax as sx
from simexplain_jax import viz
import tensorflow_datasets as tfds

import simexplain_jax.data  # noqa: F401  (registers the builders)
from simexplain_jax.data import pairs
from simexplain_jax.data.preprocess import normalize_images, normalized_color
from simexplain_jax.models import EmbeddingNet, ResNet18, SmallCNN, embed_fn

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config (experiments/configs/*.py)")
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder")
flags.mark_flags_as_required(["config", "workdir"])

MODELS = {"small_cnn": lambda: SmallCNN(), "resnet18": lambda: ResNet18(stages=3)}


def build_embed_fn(config):
    if config.model not in MODELS:
        raise ValueError(f"config.model must be one of {sorted(MODELS)}, got {config.model!r}")
    if config.embedding_dim < 1:
        raise ValueError(f"config.embedding_dim must be >= 1, got {config.embedding_dim}")
    net = EmbeddingNet(MODELS[config.model](), config.embedding_dim)
    variables = net.init(jax.random.key(config.seed), jnp.zeros((1, config.image_size, config.image_size, 3)))
    return embed_fn(net, variables)


def load_positive_pairs(config, workdir):
    """``config.num_pairs`` same-class pairs from the shapes test split: uint8 queries, references."""
    builder = tfds.builder(f"shapes/{config.image_size}px", data_dir=config.data_dir or os.path.join(workdir, "tfds"))
    builder.download_and_prepare()
    source = builder.as_data_source("test")
    labels = [source[i]["label"] for i in range(len(source))]
    positives = [p for p in pairs.sample_pairs(labels, 2 * config.num_pairs, seed=config.seed) if p.label][: config.num_pairs]
    queries = np.stack([source[int(p.query)]["image"] for p in positives])
    references = np.stack([source[int(p.reference)]["image"] for p in positives])
    return queries, references


def main(argv):
    del argv
    config, workdir = _CONFIG.value, _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    embed = build_embed_fn(config)
    queries_u8, references_u8 = load_positive_pairs(config, workdir)
    queries, references = normalize_images(queries_u8), normalize_images(references_u8)
    ref_embeddings = jax.jit(lambda f, x: f(x))(embed, jnp.asarray(references))
    background = normalized_color(config.insertion_deletion.background)
    key = jax.random.key(config.seed)
    metric_options = dict(config.insertion_deletion.to_dict(), background=background)

    methods = {
        "rise": lambda q, r: sx.saliency.rise(embed, q, r, key=key, **config.rise),
        "sliding_window": lambda q, r: sx.saliency.sliding_window(embed, q, r, **config.sliding_window),
    }
    maps = {name: [] for name in methods}
    rows = []
    for i in tqdm(range(config.num_pairs), desc="pairs", unit="pair"):
        row = {"pair": i, "similarity": float(sx.similarity.cosine(embed(queries[i][None])[0], ref_embeddings[i]))}
        for name, method in methods.items():
            start = time.perf_counter()
            saliency = jax.block_until_ready(method(queries[i], ref_embeddings[i]))
            seconds = time.perf_counter() - start
            scores = sx.metrics.insertion_deletion(embed, queries[i], ref_embeddings[i], saliency,
                                                   **metric_options)
            maps[name].append(np.asarray(saliency))
            row[name] = {"insertion_auc": 100 * float(scores.insertion_auc),
                         "deletion_auc": 100 * float(scores.deletion_auc), "seconds": seconds}
        rows.append(row)

    summary = {name: {metric: float(np.mean([r[name][metric] for r in rows]))
                      for metric in ("insertion_auc", "deletion_auc", "seconds")} for name in methods}
    figure = viz.pair_gallery(
        os.path.join(workdir, "pairs.png"), queries_u8, references_u8, {k: np.stack(v) for k, v in maps.items()},
        captions={name: [f"ins {r[name]['insertion_auc']:.0f} / del {r[name]['deletion_auc']:.0f}" for r in rows]
                  for name in methods},
        title="shapes test pairs (same class), untrained small CNN: which query regions drive the similarity")
    results = {"num_pairs": config.num_pairs, "summary": summary, "pairs": rows, "figure": figure,
               "config": config.to_dict()}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = ["| method | insertion AUC x100 (higher is better) | deletion AUC x100 (lower is better) | s / pair |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {s['insertion_auc']:.1f} | {s['deletion_auc']:.1f} | {s['seconds']:.3f} |"
              for name, s in summary.items()]
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    logging.info("wrote %s", workdir)
    print("\n".join(lines))
    print(f"results: {os.path.join(workdir, 'results.json')}; figure: {figure}")


if __name__ == "__main__":
    app.run(main)
