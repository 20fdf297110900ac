"""``experiments.sane`` writes its report before each stage that has to run (the sections done so far
and the stage in progress), and the full report at the end."""

import json
import os

import ml_collections
import numpy as np
from PIL import Image

PNG = {"saliency": ("curves.png", "gallery.png"), "explanations": ("gallery.png",)}
RESULTS = {
    "similarity": {"dataset": "shapes/32px", "model": "small_cnn", "test_pair_auc": 0.9, "steps": 10},
    "saliency": {"num_pairs": 4, "num_positive": 2, "rows": [
        {"method": "rise", "reference": "fixed", "insertion_auc": 60.0, "deletion_auc": 40.0,
         "pointing_accuracy": 0.5, "mass_on_key": 0.3, "seconds_per_pair": 0.1}]},
    "attributes": {"runs": [{"lambda": 0.0, "test_map": 50.0, "val_map": 51.0, "best_epoch": 2, "history": [1, 2]}]},
    "explanations": {"num_pairs": 2, "oracle": "counterfactual re-rendering", "gallery_selector": "concept selector",
                     "rows": [{"selector": "concept", "w": 0.0, "scorer": "product", "presence": "soft", "gt_top1": 1.0,
                               "gt_top3": 1.0, "oracle_agreement": 0.5, "mean_similarity_drop": 0.1}]},
}


def test_the_report_fills_in_as_stages_finish(tmp_path):
    from experiments import sane

    pages = {}

    def stage(name):
        def run(config, workdir):
            pages[name] = (tmp_path / "report.html").read_text()
            os.makedirs(workdir, exist_ok=True)
            for png in PNG.get(name, ()):
                Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(os.path.join(workdir, png))
            with open(os.path.join(workdir, "results.json"), "w") as f:
                json.dump(RESULTS[name], f)
        return run

    plan = {name: (stage(name), ml_collections.ConfigDict({"x": 1}), str(tmp_path / name)) for name in sane.STAGES}
    results = sane.run_stages(plan, str(tmp_path))
    assert "In progress: stage similarity</b> (stages done: none yet)" in pages["similarity"]
    assert "In progress: stage saliency</b> (stages done: similarity)" in pages["saliency"]
    assert "test pair AUC <b>0.9000</b>" in pages["saliency"] and "Saliency methods" not in pages["saliency"]
    assert "Saliency methods" in pages["attributes"] and "Attribute predictor" not in pages["attributes"]
    assert "Attribute predictor" in pages["explanations"] and "Explained matches" not in pages["explanations"]
    final = (tmp_path / "report.html").read_text()
    assert "In progress" not in final and "Explained matches" in final and "Attribute explanations" in final
    assert "Attribute explanations: 2 positive pairs; oracle: counterfactual re-rendering." in final
    assert "history" not in results["attributes"]["runs"][0]
    # a rerun with every stage done writes no interim page: only the final one
    os.remove(tmp_path / "report.html")
    pages.clear()
    sane.run_stages(plan, str(tmp_path))
    assert pages == {} and (tmp_path / "report.html").read_text() == final


def test_the_report_shows_the_first_concept_fit_at_every_w_and_the_others_at_the_first():
    from experiments.sane import shown_rows

    def row(selector, w, concept=None, scorer=None):
        return {"selector": selector, "w": w, "concept": concept, "scorer": scorer}

    rows = ([row("paper", w) for w in (0.0, 0.5)] + [row("concept", w, "ridge", "product") for w in (0.0, 0.5)]
            + [row("concept", w, "pattern", "shift") for w in (0.0, 0.5)] + [row("random", None)])
    assert shown_rows(rows) == rows[:5] + rows[6:]
    assert shown_rows(rows[:2]) == rows[:2]  # no concept rows: all of them
