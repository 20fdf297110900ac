"""Select the attribute that explains each test positive pair and score the choice.

    python -m experiments.explain_attributes --config=experiments/configs/explain_attributes_shapes.py:runlocal --workdir=DIR

Selectors: ``paper`` (w * confidence + (1 - w) * map match, each w of ``config.weights``),
``pair_aware`` (the attribute must be present and salient in both images), ``concept`` (present
in both images, ranked by its share of the similarity in the model's embedding: concept
directions fitted on the training or validation split, never test, by each fit of
``config.concept_methods``, scored by each scorer of ``config.concept_scorers`` that the fit
supports; ``sx.attributes.concept_relevance`` and ``cell_concept_relevance``) and ``random`` (a
random present attribute). The presence thresholds
are those train_attributes calibrated on the validation split. On the shapes benchmark: top-1 /
top-3 accuracy against the class-defining attribute and the counterfactual oracle (re-render the
query with each key-object attribute changed; the largest similarity drop); elsewhere the
activation-map removal proxy is the oracle. Two oracle proxies that need no re-rendering are
scored against the exact oracle on shapes (``faithfulness``): removing the attribute's concept
direction from the query's embedding, and deleting its activation-map region.

Exact agreement counts a near-tie as a miss, so each row also reports the regret ratio
(``sx.metrics.regret_ratios``): the oracle's similarity drop for the selected attribute over the
largest drop among the candidates, its mean and the share of pairs at >= 0.9.

``results.json``: ``{"rows": [{"selector", "w", "concept", "scorer", "presence", "gt_top1", "gt_top3",
"oracle_agreement", "regret_ratio", "regret_at_least_0.9", "mean_similarity_drop", "shortcut_top1",
"shortcut_followed", "shortcut_followed_pairs"}], "oracle_names": {...}, "faithfulness": {...}, "map": {...},
...}`` plus ``results.md`` and ``gallery.png``. On the shortcut variant, ``shortcut_top1`` is how often
the shortcut filler is named first over the pairs of the classes that have one, and
``shortcut_followed`` the same over only those pairs where the oracle names the shortcut (the
model relies on it there; ``shortcut_followed_pairs`` of them).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging
from jax.tree_util import Partial
from tqdm import tqdm

import simexplain_jax as sx
from experiments import similarity_source, train_attributes, validation
from experiments.tables import markdown_table
from experiments.stages import ensure_stage, flags_main
from experiments.workdir_lock import WorkdirLock
from simexplain_jax import viz
from simexplain_jax.attributes import (Thresholds, cell_concept_relevance, concept_relevance, fit_concepts,
                                       fit_edit_concepts, query_removal_drop, select)
from simexplain_jax.attributes.removal import removal_drops
from simexplain_jax.attributes.saliency_cache import resize_maps
from simexplain_jax.engine import apply_in_chunks
from simexplain_jax.imageops import normalize_images
from simexplain_jax.io import write_atomic, write_json_atomic
from simexplain_jax.train.attributes import THRESHOLDS_FILE, predict
from simexplain_jax.data.datasets import attribute_names, attribute_splits, explanation_pairs
from simexplain_jax.models.loading import load_attribute_predictor

def choose_run(runs, which):
    if which == "best":
        return max(runs, key=lambda r: r["val_map"])
    matches = [r for r in runs if abs(r["lambda"] - float(which)) < 1e-12]
    if not matches:
        raise ValueError(f"config.run={which!r}: no run with that lambda in {[r['lambda'] for r in runs]}")
    return matches[0]


def run(config, workdir: str) -> dict:
    """Checks ``config`` (before any training or data build), then explains under the workdir's
    lock; returns the results written to ``<workdir>/results.json``."""
    weights = validation.check_explain_attributes_config(config)
    with WorkdirLock(workdir):  # one run per workdir
        return explain(config, workdir, weights)


def explain(config, workdir: str, weights: list) -> dict:
    data_dir = config.data_dir or os.path.join(workdir, "tfds")
    attr_dir = ensure_stage(train_attributes.run, config.attributes_config,
                            config.attributes_workdir or os.path.join(workdir, "attributes"),
                            {"data_dir": data_dir, "manual_dir": config.manual_dir,
                             "similarity_workdir": config.similarity_workdir,
                             "similarity_model": config.similarity_model},
                            given=bool(config.attributes_workdir))
    with open(os.path.join(attr_dir, "results.json")) as f:
        attr_results = json.load(f)
    predictor_run = choose_run(attr_results["runs"], config.run)
    predictor, predictor_vars, _ = load_attribute_predictor(predictor_run["checkpoint_dir"])
    dataset = attr_results["dataset"]
    names = attribute_names(dataset, data_dir=data_dir, manual_dir=config.manual_dir)
    thresholds = Thresholds.load(os.path.join(predictor_run["checkpoint_dir"], THRESHOLDS_FILE), len(names))

    data = explanation_pairs(dataset, data_dir=data_dir, manual_dir=config.manual_dir, split=config.split,
                             num_pairs=2 * config.num_pairs, seed=config.seed)
    # the model the attribute predictor was trained against (its folder, or the model of your own it names)
    sim_model = similarity_source.load(attr_results, data.images.shape[1])
    embed = sim_model.embed
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
    ref_embeddings = apply_in_chunks(embed, images[pairs[:, 1]])
    query_embeddings = apply_in_chunks(embed, images[pairs[:, 0]])
    # concept directions in the similarity embedding, fitted on the training (or validation) split, never test
    fit_split = attribute_splits(dataset, data_dir=data_dir, manual_dir=config.manual_dir)[config.concept_split]
    methods, skipped = list(config.concept_methods), {}
    if "edits" in methods and fit_split.scenes is None:  # nothing to re-render: the other fits still run
        skipped["edits"] = f"{dataset} has no scenes to re-render"
        methods.remove("edits")
        logging.warning("concept fit 'edits' skipped: %s", skipped["edits"])
    if not methods:
        raise ValueError(f"config.concept_methods: 'edits' re-renders training scenes, which {dataset} does not have; "
                         "name another fit for this dataset")
    fitted, fit_embeddings = {}, None
    for method in methods:
        if method == "edits":  # counterfactual re-renders of training scenes: what the model is sensitive to
            from simexplain_jax.attributes.counterfactual import scene_edits
            from simexplain_jax.data import shapes

            scenes = [shapes.Scene.from_json(t) for t in fit_split.scenes[: config.edit_scenes]]
            with tqdm(total=len(scenes), desc="concept edits", unit="scene") as edits_bar:
                original, edited, removed = scene_edits(embed, scenes, names, data.images.shape[1],
                                                        progress=edits_bar.update)
            fitted[method] = fit_edit_concepts(original, edited, removed, len(names), split=config.concept_split)
        else:
            if fit_embeddings is None:
                fit_embeddings = apply_in_chunks(embed, normalize_images(fit_split.images))
            fitted[method] = fit_concepts(fit_embeddings, fit_split.attributes, split=config.concept_split,
                                          ridge=config.concept_ridge, method=method, seed=config.seed)
    concepts = fitted[methods[0]]
    cells = None
    if "cells" in config.concept_scorers:  # spatially resolved: the exact split of a pooled model's similarity
        try:
            pooled = sx.saliency.pooled_model(sim_model.module, sim_model.variables)
            cell_fn = Partial(sx.saliency.cell_embeddings, pooled)
            cells = [apply_in_chunks(cell_fn, images[pairs[:, k]]) for k in (0, 1)]
            cells = [c.reshape(len(c), -1, c.shape[-1]) for c in cells]
        except (TypeError, ValueError):
            cells = None  # not a pooled model: no cells rows
    combos = [(m, x) for m in methods for x in config.concept_scorers if supports(fitted[m], m, x, methods, cells)]
    relevance = {}
    for method, scorer in combos:
        relevance[(method, scorer)] = (
            cell_concept_relevance(fitted[method], *cells, fraction=config.cell_fraction) if scorer == "cells" else
            concept_relevance(fitted[method], query_embeddings, ref_embeddings, scorer=scorer))
    embedding_drops = query_removal_drop(concepts, query_embeddings, ref_embeddings)

    shapes_data = data.scenes is not None
    if shapes_data:
        from simexplain_jax.attributes.counterfactual import oracle, similarity_drops
        from simexplain_jax.data import shapes

        scenes = [shapes.Scene.from_json(data.scenes[q]) for q in pairs[:, 0]]
        truths = [shapes.class_carriers(s)[0][1] for s in scenes]
        # the shortcut variant ties a filler to two classes in its training split (shapes.SHORTCUTS)
        shortcuts = [shapes.shortcut_of(t) if dataset.endswith("_shortcut") else None for t in truths]
    oracles, best_drops, drop_cache, proxies = [], [], {}, {"embedding_removal": [], "region_removal": []}

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
            best_drops.append(max(drops.values()))
            for name, value in drops.items():
                drop_cache[(i, names.index(name))] = value
            # the proxies' choice among the same candidates (the key object's attributes)
            candidates = [names.index(name) for name in drops]
            proxies["embedding_removal"].append(candidates[int(np.argmax(embedding_drops[i, candidates]))])
            region = removal_drops(embed, images[pairs[i, 0]], ref_embeddings[i], aams[pairs[i, 0]], candidates,
                                   config.removal_fraction)
            proxies["region_removal"].append(candidates[int(np.argmax(region))])
        else:
            candidates = np.flatnonzero(thresholds.present(scores[pairs[i, 0]]))
            values = [drop(i, int(a)) for a in candidates]
            oracles.append(int(candidates[int(np.argmax(values))]) if len(values) else -1)
            best_drops.append(max(values) if len(values) else None)

    rows, chosen = [], {}
    # the hard presence rule only for the first concept fit (it caps every scorer alike)
    settings = ([("paper", w, None, None, None) for w in weights] + [("pair_aware", w, None, None, None) for w in weights]
                + [("concept", w, method, scorer, "soft") for method, scorer in combos for w in weights]
                + [("concept", weights[0], method, scorer, "both") for method, scorer in combos if method == methods[0]
                   and scorer != "cells"] + [("random", None, None, None, None)])
    rng = np.random.default_rng(config.seed)
    for selector, w, method, scorer, presence in settings:
        top1, top3, agree, drops, shortcut_top1, shortcut_followed = [], [], [], [], [], []
        for i, (q, r) in enumerate(pairs):
            explanation = select(scores[q], aams[q], q_maps[i], thresholds, w=0.5 if w is None else w,
                                 selector=selector, reference_scores=scores[r], reference_aams=aams[r],
                                 reference_saliency=r_maps[i],
                                 relevance=relevance[(method, scorer)][i] if scorer else None,
                                 presence=presence or "soft", presence_weight=config.presence_weight, top_k=3, rng=rng)
            chosen[(selector, w, method, scorer, presence, i)] = explanation
            picked = explanation.attributes
            if shapes_data:
                truth = names.index(truths[i])
                top1.append(bool(picked) and picked[0] == truth)
                top3.append(truth in picked)
                if shortcuts[i] is not None:
                    shortcut_top1.append(bool(picked) and picked[0] == names.index(shortcuts[i]))
                    if oracles[i] == names.index(shortcuts[i]):  # the model relies on the shortcut here
                        shortcut_followed.append(bool(picked) and picked[0] == oracles[i])
            agree.append(bool(picked) and picked[0] == oracles[i])
            drops.append(drop(i, picked[0]) if picked else 0.0)
        # near-ties: the selection's drop over the best candidate's (pairs with candidates)
        scored = [i for i, b in enumerate(best_drops) if b is not None]
        regret = (sx.metrics.regret_ratios([drops[i] for i in scored], [best_drops[i] for i in scored])
                  if scored else np.zeros(0))
        rows.append({"selector": selector, "w": w, "concept": method, "scorer": scorer, "presence": presence,
                     "gt_top1": float(np.mean(top1)) if top1 else None, "gt_top3": float(np.mean(top3)) if top3 else None,
                     "oracle_agreement": float(np.mean(agree)), "mean_similarity_drop": float(np.mean(drops)),
                     "regret_ratio": float(np.mean(regret)) if len(regret) else None,
                     "regret_at_least_0.9": float(np.mean(regret >= 0.9)) if len(regret) else None,
                     "shortcut_top1": float(np.mean(shortcut_top1)) if shortcut_top1 else None,
                     "shortcut_followed": float(np.mean(shortcut_followed)) if shortcut_followed else None,
                     "shortcut_followed_pairs": len(shortcut_followed)})
        print(json.dumps(rows[-1]), flush=True)

    oracle_names, faithfulness = {}, {}
    if shapes_data:  # which attribute the model relies on, pair by pair (the exact oracle)
        named = [names[o] for o in oracles]
        oracle_names = {"class_attribute": float(np.mean([n == t for n, t in zip(named, truths)])),
                        "shortcut": (float(np.mean([n == c for n, c in zip(named, shortcuts) if c is not None]))
                                     if any(c is not None for c in shortcuts) else None),
                        "other": float(np.mean([n != t and n != c for n, t, c in zip(named, truths, shortcuts)]))}
        faithfulness = {name: float(np.mean(np.asarray(choice) == np.asarray(oracles)))
                        for name, choice in proxies.items()}

    gallery_selector = (f"concept selector ({combos[0][0]} directions, {combos[0][1]} scorer, soft presence)" if combos
                        else f"pair-aware selector, w = {0.5 if 0.5 in weights else weights[0]:g}")
    results = {"gallery_selector": gallery_selector, "rows": rows, "oracle_names": oracle_names, "faithfulness": faithfulness,
               "concepts": {"split": concepts.split, "fitted": int(concepts.valid.sum()), "ridge": config.concept_ridge,
                            "presence_weight": config.presence_weight, "methods": methods,
                            "fitted_by_method": {m: int(c.valid.sum()) for m, c in fitted.items()}, "skipped": skipped,
                            "cell_fraction": config.cell_fraction if cells is not None else None},
               "map": {f"lambda={r['lambda']:g}": {"test_map": r["test_map"], "val_map": r["val_map"]}
                                     for r in attr_results["runs"]},
               "predictor_lambda": predictor_run["lambda"], "num_pairs": int(len(pairs)), "dataset": dataset,
               "oracle": "counterfactual re-rendering" if shapes_data else "activation-map region removal",
               "seed": config.seed, "attributes_workdir": attr_dir}
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"{len(pairs)} positive pairs of {dataset} {config.split}; "
             f"predictor lambda={predictor_run['lambda']:g}; oracle: {results['oracle']}", "",
             *markdown_table(["selector", "w", "concepts", "scorer", "presence", "top-1 (ground truth)",
                              "top-3 (ground truth)", "oracle agreement", "regret ratio", "regret ratio >= 0.9",
                              "mean similarity drop", "shortcut first", "shortcut first where the oracle names it"],
                             [[r["selector"], r["w"], r["concept"], r["scorer"], r["presence"], r["gt_top1"],
                               r["gt_top3"], r["oracle_agreement"], r["regret_ratio"], r["regret_at_least_0.9"],
                               r["mean_similarity_drop"], r["shortcut_top1"], r["shortcut_followed"]] for r in rows],
                             formats={10: "{:.4f}".format})]
    if oracle_names:
        lines += ["", f"The exact oracle names the class attribute for {oracle_names['class_attribute']:.3f} of the "
                      f"pairs, the shortcut filler for {fmt(oracle_names['shortcut'])} (of pairs whose class has one) "
                      f"and another attribute for {oracle_names['other']:.3f}.",
                  "Oracle proxies without re-rendering, agreement with the exact oracle: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in faithfulness.items()) + "."]
    write_atomic(os.path.join(workdir, "results.md"), "\n".join(lines) + "\n")
    shown = np.arange(min(config.gallery_pairs, len(pairs)))
    captions = []
    for i in shown:
        explanation = (chosen[("concept", weights[0], *combos[0], "soft", int(i))] if combos else
                       chosen[("pair_aware", 0.5 if 0.5 in weights else weights[0], None, None, None, int(i))])
        text = "\n".join(f"{names[a]} {s:.2f}" for a, s in zip(explanation.attributes, explanation.scores))
        captions.append(text + (f"\n(truth: {truths[i]})" if shapes_data else ""))
    viz.pair_gallery(os.path.join(workdir, "gallery.png"), data.images[pairs[shown, 0]], data.images[pairs[shown, 1]],
                     {"saliency + top-3": maps[shown]}, captions={"saliency + top-3": captions},
                     title=f"{dataset}: why do these match?")
    results["correspondences"] = correspondence_gallery(os.path.join(workdir, "correspondences.png"), sim_model.module,
                                                        sim_model.variables,
                                                        embed, data.images, images, pairs[shown], config.seed, dataset)
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    print("\n".join(lines))
    return results


def supports(concepts, method: str, scorer: str, methods: list, cells) -> bool:
    """Whether the (concept fit, scorer) row is run: ``leace`` erases what the labels' probe finds,
    the same for every label fit (so once, with the first); ``shift`` needs a fit that keeps shifts;
    ``gradient`` the ``mlp`` fit's network; ``cells`` needs a pooled model."""
    if scorer == "leace":
        return concepts.probe is not None and method == next(m for m in methods if m != "edits")
    if scorer == "shift":
        return concepts.shifts is not None
    if scorer == "gradient":
        return concepts.network is not None
    return scorer != "cells" or cells is not None


def correspondence_gallery(path, model, variables, embed, raw, images, pairs, seed, dataset, top_k=3) -> dict:
    """Draws the strongest cell pairs of ``pairs`` (with both first-order maps) into ``path``: exact
    (``pooled_pair``) for a pooled model, ``rise_pair`` otherwise. Returns what the report needs."""
    queries, references = images[pairs[:, 0]], images[pairs[:, 1]]
    try:
        if model is None:
            raise TypeError("no Flax module that takes these images as they are")
        pooled = sx.saliency.pooled_model(model, variables)
        method, result = "pooled_pair", sx.saliency.pooled_pair(pooled, None, queries, references)
    except (TypeError, ValueError):  # not an affine head on a mean-pooled feature map
        method, result = "rise_pair", sx.saliency.rise_pair(embed, queries, references,
                                                            key=jax.random.key(seed), num_masks=500)
    corr = np.asarray(result.correspondence)
    strongest = [sx.saliency.strongest_pairs(c, queries.shape[1:], references.shape[1:], top_k) for c in corr]
    cell_pairs = int(np.prod(corr.shape[-4:]))  # a share of 1 / cell_pairs is the average cell pair's
    captions = [f"similarity {float(s):.3f}; strongest pair {p[0].share:.1%} of it ({p[0].share * cell_pairs:.1f}x "
                "average)" for s, p in zip(np.asarray(result.similarity), strongest)]
    viz.correspondence_figure(path, raw[pairs[:, 0]], raw[pairs[:, 1]], strongest, np.asarray(result.query_map),
                              np.asarray(result.reference_map), captions=captions,
                              title=f"{dataset}: which part matches which ({method})")
    return {"method": method, "figure": os.path.basename(path), "top_k": top_k,
            "pairs": [[p._asdict() for p in pair] for pair in strongest]}


def main():
    flags_main(run, "experiments/configs/explain_attributes_*.py")


if __name__ == "__main__":
    main()
