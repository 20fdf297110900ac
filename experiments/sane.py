"""The main job: data -> similarity model -> saliency evaluation -> attribute predictor ->
attribute explanations -> an HTML report.

    python -m experiments.sane --config=experiments/configs/sane_shapes.py --workdir=workdir/demo

Stages run in this process, each as its experiment module's ``run(config, workdir)`` into
``<workdir>/{similarity,saliency,attributes,explanations}`` with its own config (``*_config``,
loaded in-process) and ``config.stages.<name>`` set into it, and are skipped when their
``results.json`` exists; saliency maps are cached per query, so a run killed at any point resumes
where it stopped. With a model of your own (``--config.similarity_model.factory`` or
``.torchvision_weights``) there is no similarity stage and every stage explains that model. One
run per workdir at a time (``<workdir>/.lock``). Writes
``<workdir>/report.html`` (self-contained: tables, curves, galleries) before each stage that has
to run, with the sections of the stages done so far and the stage in progress, and in full at the
end; and ``<workdir>/results.json`` (every stage's results).
"""

from __future__ import annotations

import html
import json
import os
import time

from experiments import (explain_attributes, saliency_eval, similarity_source, train_attributes, train_similarity,
                         validation)
from experiments.stages import ensure_stage, flags_main, override, stage_config
from experiments.workdir_lock import WorkdirLock
from simexplain_jax import viz
from simexplain_jax.io import write_json_atomic

STAGES = ("similarity", "saliency", "attributes", "explanations")
TITLE = "simexplain_jax: why do these match?"
NO_MASKS = ("<p>Pointing accuracy and mass on the key object are left out: they need each image's ground-truth "
            "key-object mask, which only the shapes benchmark has.</p>")
NO_TRUTH = ("<p>Ground-truth top-1 / top-3 are left out: they need the attribute that defines each class, which "
            "only the shapes benchmark knows. The oracle here removes each candidate attribute's activation-map "
            "region from the query and measures the similarity drop.</p>")


def _load(folder):
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)


def report_sections(results: dict, folders: dict, running: str | None = None) -> list[tuple[str, str]]:
    """The report's sections for the stages whose results are in ``results`` (all four: the final
    report). ``running`` names the stage in progress, said at the top of an interim report."""
    sim, sal, attr, expl = (results.get(k) for k in STAGES)
    summary = []
    if sim:
        summary.append(f"Dataset <b>{sim['dataset']}</b>; similarity model <b>{sim['model']}</b> with test pair AUC "
                       f"<b>{sim['test_pair_auc']:.4f}</b> ({sim['steps']} steps).")
    own = next((r for r in (sal, attr) if r and "similarity_model" in r), None)
    if own:
        summary.append(f"Dataset <b>{html.escape(own['dataset'])}</b>; similarity model of your own, not trained "
                       f"here: <b>{html.escape(own_model_name(own))}</b>.")
    if sal:
        summary.append(f"Saliency: {sal['num_pairs']} test pairs ({sal['num_positive']} positive).")
    if expl:
        summary.append(f"Attribute explanations: {expl['num_pairs']} positive pairs; oracle: {expl['oracle']}.")
    text = f"<p>{' '.join(summary)}</p>" if summary else ""
    if running is not None:
        done = [name for name in STAGES if results.get(name)]
        text = (f"<p><b>In progress: stage {html.escape(running)}</b> (stages done: "
                f"{', '.join(done) if done else 'none yet'}). This page is rewritten as each stage finishes; "
                "reload it.</p>" + text)
    sections = [("Summary", text)]
    if expl:
        selector = expl.get("gallery_selector", "pair-aware selector, w = 0.5")
        truth = any(r.get("gt_top1") is not None for r in expl["rows"])
        sections.append(("Explained matches: saliency and the attribute that explains each match",
                         f"<p>Query, reference, the query's RISE map against the reference, the top-3 attributes "
                         f"({html.escape(selector)}) with their scores" + (" and the ground truth" if truth else "")
                         + ".</p>"
                         + viz.image_html(os.path.join(folders["explanations"], "gallery.png"), "attribute gallery",
                                          "60%")))
        correspondences = expl.get("correspondences")
        if correspondences:
            exact = correspondences["method"] == "pooled_pair"
            sections.append(("Which part matches which: correspondences",
                             f"<p>For the same pairs: each image's first-order map, then the {correspondences['top_k']} "
                             "strongest cell pairs (query cell ~ reference cell, 1 = strongest) joined by lines, with the "
                             "strongest pair's share of the similarity. "
                             + ("Exact: the pooled embedding's similarity split over pairs of feature cells "
                                "(<code>pooled_pair</code>, one forward pass per image)." if exact else
                                "Estimated by the RISE cross estimator (<code>rise_pair</code>).") + "</p>"
                             + viz.image_html(os.path.join(folders["explanations"], correspondences["figure"]),
                                              "correspondences", "75%")))
    if sal:
        located = any(r.get("pointing_accuracy") is not None for r in sal["rows"])
        columns = ["method", "reference", "insertion_auc", "deletion_auc"]
        columns += ["pointing_accuracy", "mass_on_key"] if located else []
        sections.append(("Saliency methods (insertion / deletion AUC x100" + ("; pointing on the key object)"
                                                                              if located else ")"),
                         ("" if located else NO_MASKS)
                         + viz.table_html(sal["rows"], columns + ["seconds_per_pair"])
                         + viz.image_html(os.path.join(folders["saliency"], "curves.png"), "curves", "80%")
                         + viz.image_html(os.path.join(folders["saliency"], "gallery.png"), "saliency gallery")))
    if attr:
        sections.append(("Attribute predictor (test mAP x100, same seed)",
                         viz.table_html(attr["runs"], ["lambda", "test_map", "val_map", "best_epoch"], digits=2)))
    if expl:
        truth = any(r.get("gt_top1") is not None for r in expl["rows"])
        columns = ["selector", "w", "concept", "scorer", "presence"] + (["gt_top1", "gt_top3"] if truth else [])
        rows, note = shown_rows(expl["rows"]), ""
        if len(rows) < len(expl["rows"]):
            note = (f"<p>{len(rows)} of {len(expl['rows'])} rows: the concept selector's other fits and scorers at "
                    "the first w only; results.md of the stage has them all.</p>")
        sections.append(("Attribute explanations (" + ("ground truth and " if truth else "") + f"{expl['oracle']} "
                         "oracle)", ("" if truth else NO_TRUTH) + note
                         + viz.table_html(rows, columns + ["oracle_agreement", "regret_ratio", "mean_similarity_drop"])))
    return sections


def shown_rows(rows: list) -> list:
    """The report's rows: every row but the concept selector's, whose first (fit, scorer) is shown at every w
    and the others at the first w only."""
    concept = [r for r in rows if r["selector"] == "concept"]
    if not concept:
        return rows
    first = (concept[0].get("concept"), concept[0]["scorer"])
    return [r for r in rows if r["selector"] != "concept" or (r.get("concept"), r["scorer"]) == first
            or r["w"] == concept[0]["w"]]


def own_model_name(results: dict) -> str:
    """What a stage's results say of the model of your own it explained."""
    group = results["similarity_model"]
    if group["factory"]:
        return group["factory"]
    return f"torchvision {group['arch']} ({group['stages']} stages) from {os.path.basename(group['torchvision_weights'])}"


# each stage: its experiment's run, the config field naming its config, and its check (run before any stage)
STAGE_RUNS = {"similarity": (train_similarity.run, "similarity_config", validation.check_similarity_config),
              "saliency": (saliency_eval.run, "saliency_config", validation.check_saliency_config),
              "attributes": (train_attributes.run, "attributes_config", validation.check_attributes_config),
              "explanations": (explain_attributes.run, "explain_config", validation.check_explain_attributes_config)}


def stage_plan(config, workdir: str) -> dict:
    """Every stage's folder and config, overrides included, each checked: a bad setting of any stage
    raises here, naming it, before the first stage starts."""
    data_dir = os.path.abspath(config.data_dir or os.path.join(workdir, "tfds"))
    folders = {name: os.path.join(workdir, name) for name in STAGES}
    links = {"similarity": {}, "saliency": {"similarity_workdir": folders["similarity"]},
             "attributes": {"similarity_workdir": folders["similarity"]},
             "explanations": {"attributes_workdir": folders["attributes"]}}
    names = STAGES
    if similarity_source.given(config):  # a model of your own: no similarity stage; every stage explains it
        group = config.similarity_model.to_dict()
        try:
            validation.check_similarity_model(config)
            group["dataset"] = group["dataset"] or stage_config(config.similarity_config,
                                                                config.stages.similarity).dataset
        except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
            raise ValueError(f"config.similarity_model: {err.args[0] if err.args else err}") from None
        names = STAGES[1:]
        links = {"saliency": {"similarity_model": group}, "attributes": {"similarity_model": group},
                 "explanations": {"attributes_workdir": folders["attributes"], "similarity_model": group}}
    manual_dir = config.get("manual_dir", "")
    if manual_dir:  # the user's folder (attribute_folder, awa2, polyvore_outfits), for every stage
        links = {name: dict(link, manual_dir=os.path.abspath(manual_dir)) for name, link in links.items()}
    plan = {}
    for name in names:
        run, field, check = STAGE_RUNS[name]
        where = f"config.stages.{name}"
        try:
            stage = stage_config(config[field], {"data_dir": data_dir, **links[name]})
            override(stage, config.stages[name], where=where)
            check(stage)
        except (ValueError, KeyError, TypeError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            raise ValueError(f"stage {name} ({config[field]} with {where}): {message}") from None
        plan[name] = (run, stage, folders[name])
    return plan


def run(config, workdir: str) -> dict:
    """Checks every stage's config, then runs the stages that have no results yet and writes the
    report, under the workdir's lock (each stage also locks its own folder); returns the results
    written to ``<workdir>/results.json``. A finished stage whose recorded settings differ from the
    requested ones is refused, naming the difference (``ensure_stage``)."""
    plan = stage_plan(config, workdir)
    with WorkdirLock(workdir):  # one run per workdir
        return run_stages(plan, workdir)


def run_stages(plan: dict, workdir: str) -> dict:
    start = time.perf_counter()
    folders = {name: folder for name, (_, _, folder) in plan.items()}
    results = {}
    for name in plan:
        run, stage, folder = plan[name]
        if not os.path.exists(os.path.join(folder, "results.json")):  # an interim report: the stages done so far
            viz.write_report(os.path.join(workdir, "report.html"), TITLE, report_sections(results, folders, name))
        ensure_stage(run, stage, folder)
        results[name] = _load(folder)
        if name == "attributes":
            for attributes_run in results[name]["runs"]:
                attributes_run.pop("history", None)
    report = viz.write_report(os.path.join(workdir, "report.html"), TITLE, report_sections(results, folders))
    results["seconds_this_invocation"] = time.perf_counter() - start
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    print("wrote:")
    for name, folder in folders.items():
        print(f"  {name:13s} {folder}")
    print(f"  report        {report}\n  results       {os.path.join(workdir, 'results.json')}")
    quality = (f"similarity test AUC {results['similarity']['test_pair_auc']:.4f}; " if "similarity" in results
               else f"similarity model: {own_model_name(results['saliency'])}; ")
    print(f"{quality}{time.perf_counter() - start:.0f} s this run")
    return results


def main():
    flags_main(run, "experiments/configs/sane_*.py")


if __name__ == "__main__":
    main()
