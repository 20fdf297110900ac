"""The main job: data -> similarity model -> saliency evaluation -> attribute predictor ->
attribute explanations -> an HTML report.

    python -m experiments.sane --config=experiments/configs/sane_shapes.py --workdir=workdir/demo

Stages run as their own experiment modules into ``<workdir>/{similarity,saliency,attributes,
explanations}`` and are skipped when their ``results.json`` exists; saliency maps are cached per
query, so a run killed at any point resumes where it stopped; killing this process ends the stage
running under it. One run per workdir at a time (``<workdir>/.lock``). Writes ``<workdir>/report.html``
(self-contained: tables, curves, galleries) and ``<workdir>/results.json`` (every stage's results).
"""

from __future__ import annotations

import json
import os
import time

from absl import flags
from ml_collections import config_flags

from experiments.stages import WorkdirLock, ensure_stage, run
from simexplain_jax import viz
from simexplain_jax.io import write_json_atomic

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/configs/sane_*.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder (resumes from what it holds)")
flags.mark_flags_as_required(["config", "workdir"])


def _flatten(overrides: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: nested stage overrides as --config.a.b=1 flags."""
    flat = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _load(folder):
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)


def report_sections(results: dict, folders: dict) -> list[tuple[str, str]]:
    sim, sal, attr, expl = (results[k] for k in ("similarity", "saliency", "attributes", "explanations"))
    sections = [("Summary", (
        f"<p>Dataset <b>{sim['dataset']}</b>; similarity model <b>{sim['model']}</b> with test pair AUC "
        f"<b>{sim['test_pair_auc']:.4f}</b> ({sim['steps']} steps). Saliency: {sal['num_pairs']} test pairs "
        f"({sal['num_positive']} positive). Attribute explanations: {expl['num_pairs']} positive pairs; "
        f"oracle: {expl['oracle']}.</p>"))]
    sections.append(("Explained matches: saliency and the attribute that explains each match",
                     "<p>Query, reference, the query's RISE map against the reference, the top-3 attributes "
                     "(pair-aware selector, w = 0.5) with their scores and the ground truth.</p>"
                     + viz.image_html(os.path.join(folders["explanations"], "gallery.png"), "attribute gallery",
                                      "60%")))
    sections.append(("Saliency methods (insertion / deletion AUC x100; pointing on the key object)",
                     viz.table_html(sal["rows"], ["method", "reference", "insertion_auc", "deletion_auc",
                                                  "pointing_accuracy", "mass_on_key", "seconds_per_pair"])
                     + viz.image_html(os.path.join(folders["saliency"], "curves.png"), "curves", "80%")
                     + viz.image_html(os.path.join(folders["saliency"], "gallery.png"), "saliency gallery")))
    sections.append(("Attribute predictor (test mAP x100, same seed)",
                     viz.table_html(attr["runs"], ["lambda", "test_map", "val_map", "best_epoch"], digits=2)))
    sections.append(("Attribute explanations (ground truth and counterfactual oracle)",
                     viz.table_html(expl["rows"], ["selector", "w", "gt_top1", "gt_top3", "oracle_agreement",
                                                   "mean_similarity_drop"])))
    return sections


def main(argv):
    del argv
    config, workdir = _CONFIG.value, _WORKDIR.value
    with WorkdirLock(workdir):  # one run per workdir (each stage also locks its own folder)
        run_stages(config, workdir)


def run_stages(config, workdir: str) -> None:
    start = time.perf_counter()
    data_dir = os.path.abspath(config.data_dir or os.path.join(workdir, "tfds"))
    folders = {name: os.path.join(workdir, name) for name in ("similarity", "saliency", "attributes", "explanations")}
    stages = config.stages
    ensure_stage("train_similarity", config.similarity_config, folders["similarity"],
                 {"data_dir": data_dir, **_flatten(stages.similarity.to_dict())})
    ensure_stage("saliency_eval", config.saliency_config, folders["saliency"],
                 {"data_dir": data_dir, "similarity_workdir": folders["similarity"], **_flatten(stages.saliency.to_dict())})
    ensure_stage("train_attributes", config.attributes_config, folders["attributes"],
                 {"data_dir": data_dir, "similarity_workdir": folders["similarity"], **_flatten(stages.attributes.to_dict())})
    ensure_stage("explain_attributes", config.explain_config, folders["explanations"],
                 {"data_dir": data_dir, "attributes_workdir": folders["attributes"], **_flatten(stages.explanations.to_dict())})
    results = {name: _load(folder) for name, folder in folders.items()}
    for run in results["attributes"]["runs"]:
        run.pop("history", None)
    report = viz.write_report(os.path.join(workdir, "report.html"), "simexplain_jax: why do these match?",
                              report_sections(results, folders))
    results["seconds_this_invocation"] = time.perf_counter() - start
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    print("wrote:")
    for name, folder in folders.items():
        print(f"  {name:13s} {folder}")
    print(f"  report        {report}\n  results       {os.path.join(workdir, 'results.json')}")
    print(f"similarity test AUC {results['similarity']['test_pair_auc']:.4f}; "
          f"{time.perf_counter() - start:.0f} s this run")


if __name__ == "__main__":
    run(main)
