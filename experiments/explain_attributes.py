"""Select the attribute that explains each test positive pair and score the choice.

    python -m experiments.explain_attributes --config=experiments/configs/explain_attributes_shapes.py:runlocal --workdir=DIR

Selectors: ``paper`` (w * confidence + (1 - w) * map match, each w of ``config.weights``),
``pair_aware`` (the attribute must be present and salient in both images) and ``random`` (a
random present attribute). The presence thresholds are those train_attributes calibrated on the
validation split. On the shapes benchmark: top-1 / top-3 accuracy against the class-defining
attribute and the counterfactual oracle (re-render the query with each key-object attribute
changed; the largest similarity drop); elsewhere the activation-map removal proxy. ``results.json``: ``{"rows": [{"selector", "w",
"gt_top1", "gt_top3", "oracle_agreement", "mean_similarity_drop"}], "map": {...}, ...}`` plus
``results.md`` and ``gallery.png``.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

import simexplain_jax as sx
from experiments.stages import ensure_stage
from simexplain_jax import viz
from simexplain_jax.attributes import Thresholds, select
from simexplain_jax.attributes.removal import removal_drops
from simexplain_jax.attributes.saliency_cache import resize_maps
from simexplain_jax.imageops import normalize_images
from simexplain_jax.io import write_json_atomic
from simexplain_jax.models import embed_fn
from simexplain_jax.train.attributes import THRESHOLDS_FILE, load_attribute_predictor, predict
from simexplain_jax.train.datasets import explanation_pairs
from simexplain_jax.train.similarity import load_trained

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/configs/explain_attributes_*.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder")
flags.mark_flags_as_required(["config", "workdir"])


def choose_run(runs, which):
    if which == "best":
        return max(runs, key=lambda r: r["val_map"])
    matches = [r for r in runs if abs(r["lambda"] - float(which)) < 1e-12]
    if not matches:
        raise ValueError(f"config.run={which!r}: no run with that lambda in {[r['lambda'] for r in runs]}")
    return matches[0]


def main(argv):
    del argv
    config, workdir = _CONFIG.value, _WORKDIR.value
    logging.set_verbosity(logging.WARNING)
    weights = [float(w) for w in config.weights.split(",")]
    data_dir = config.data_dir or os.path.join(workdir, "tfds")
    attr_dir = ensure_stage("train_attributes", config.attributes_config,
                            config.attributes_workdir or os.path.join(workdir, "attributes"),
                            {"data_dir": data_dir, "manual_dir": config.manual_dir,
                             "similarity_workdir": config.similarity_workdir})
    with open(os.path.join(attr_dir, "results.json")) as f:
        attr_results = json.load(f)
    run = choose_run(attr_results["runs"], config.run)
    predictor, predictor_vars, _ = load_attribute_predictor(run["checkpoint_dir"])
    model, variables, sim_config = load_trained(os.path.join(attr_results["similarity_workdir"], "checkpoints"))
    embed = embed_fn(model, variables)
    dataset = sim_config["dataset"]
    names = _attribute_names(dataset, data_dir)
    thresholds = Thresholds.load(os.path.join(run["checkpoint_dir"], THRESHOLDS_FILE), len(names))

    data = explanation_pairs(dataset, data_dir=data_dir, manual_dir=config.manual_dir, split=config.split,
                             num_pairs=2 * config.num_pairs, seed=config.seed)
    pairs = data.pairs[data.labels == 1][: config.num_pairs]
    images = normalize_images(data.images)
    both = np.concatenate([pairs, pairs[:, ::-1]])  # q against r, then r against q
    bar = tqdm(total=len(both), desc="saliency", unit="pair")
    maps = sx.saliency.explain_pairs(config.saliency_method, embed, images, images, key=jax.random.key(config.seed),
                                     pairs=both, config=config.saliency.to_dict(), progress=bar.update)
    bar.close()
    scores, aams = predict(predictor, predictor_vars, images)
    grid = aams.shape[1]
    small = resize_maps(maps, grid)
    q_maps, r_maps = small[: len(pairs)], small[len(pairs):]
    ref_embeddings = np.asarray(embed(images[pairs[:, 1]]))

    shapes_data = data.scenes is not None
    if shapes_data:
        from simexplain_jax.attributes.counterfactual import oracle, similarity_drops
        from simexplain_jax.data import shapes

        scenes = [shapes.Scene.from_json(data.scenes[q]) for q in pairs[:, 0]]
        truths = [shapes.class_carriers(s)[0][1] for s in scenes]
    oracles, drop_cache = [], {}

    def drop(i, attribute_index):
        if (i, attribute_index) not in drop_cache:
            if shapes_data:
                value = similarity_drops(embed, scenes[i], ref_embeddings[i], [names[attribute_index]],
                                         data.images.shape[1])[0]
            else:
                value = removal_drops(embed, images[pairs[i, 0]], ref_embeddings[i], aams[pairs[i, 0]],
                                      [attribute_index], config.removal_fraction)[0]
            drop_cache[(i, attribute_index)] = float(value)
        return drop_cache[(i, attribute_index)]

    for i in tqdm(range(len(pairs)), desc="oracle", unit="pair"):
        if shapes_data:
            best, drops = oracle(embed, scenes[i], ref_embeddings[i], data.images.shape[1])
            oracles.append(names.index(best))
            for name, value in drops.items():
                drop_cache[(i, names.index(name))] = value
        else:
            candidates = np.flatnonzero(thresholds.present(scores[pairs[i, 0]]))
            values = [drop(i, int(a)) for a in candidates]
            oracles.append(int(candidates[int(np.argmax(values))]) if len(values) else -1)

    rows, chosen = [], {}
    settings = [("paper", w) for w in weights] + [("pair_aware", w) for w in weights] + [("random", None)]
    rng = np.random.default_rng(config.seed)
    for selector, w in settings:
        top1, top3, agree, drops = [], [], [], []
        for i, (q, r) in enumerate(pairs):
            explanation = select(scores[q], aams[q], q_maps[i], thresholds, w=0.5 if w is None else w,
                                 selector=selector, reference_scores=scores[r], reference_aams=aams[r],
                                 reference_saliency=r_maps[i], top_k=3, rng=rng)
            chosen[(selector, w, i)] = explanation
            picked = explanation.attributes
            if shapes_data:
                truth = names.index(truths[i])
                top1.append(bool(picked) and picked[0] == truth)
                top3.append(truth in picked)
            agree.append(bool(picked) and picked[0] == oracles[i])
            drops.append(drop(i, picked[0]) if picked else 0.0)
        rows.append({"selector": selector, "w": w,
                     "gt_top1": float(np.mean(top1)) if top1 else None, "gt_top3": float(np.mean(top3)) if top3 else None,
                     "oracle_agreement": float(np.mean(agree)), "mean_similarity_drop": float(np.mean(drops))})
        print(json.dumps(rows[-1]), flush=True)

    results = {"rows": rows, "map": {f"lambda={r['lambda']:g}": {"test_map": r["test_map"], "val_map": r["val_map"]}
                                     for r in attr_results["runs"]},
               "predictor_lambda": run["lambda"], "num_pairs": int(len(pairs)), "dataset": dataset,
               "oracle": "counterfactual re-rendering" if shapes_data else "activation-map region removal",
               "seed": config.seed, "attributes_workdir": attr_dir}
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"{len(pairs)} positive pairs of {dataset} {config.split}; predictor lambda={run['lambda']:g}; "
             f"oracle: {results['oracle']}", "",
             "| selector | w | top-1 (ground truth) | top-3 (ground truth) | oracle agreement | mean similarity drop |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['selector']} | {fmt(r['w'])} | {fmt(r['gt_top1'])} | {fmt(r['gt_top3'])} | "
              f"{fmt(r['oracle_agreement'])} | {r['mean_similarity_drop']:.4f} |" for r in rows]
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    shown = np.arange(min(config.gallery_pairs, len(pairs)))
    captions = []
    for i in shown:
        explanation = chosen[("pair_aware", 0.5 if 0.5 in weights else weights[0], int(i))]
        text = "\n".join(f"{names[a]} {s:.2f}" for a, s in zip(explanation.attributes, explanation.scores))
        captions.append(text + (f"\n(truth: {truths[i]})" if shapes_data else ""))
    viz.pair_gallery(os.path.join(workdir, "gallery.png"), data.images[pairs[shown, 0]], data.images[pairs[shown, 1]],
                     {"saliency + top-3 (pair-aware)": maps[shown]},
                     captions={"saliency + top-3 (pair-aware)": captions},
                     title=f"{dataset}: why do these match?")
    print("\n".join(lines))


def _attribute_names(dataset, data_dir):
    import tensorflow_datasets as tfds

    return list(tfds.builder(dataset, data_dir=data_dir).info.metadata["attribute_names"])


if __name__ == "__main__":
    app.run(main)
