"""The experiment entry points run end to end with their runlocal configs, in-process
(``run(config, workdir)``); each command line (flags) is run once in a subprocess.

Many devices and processes, kills and bfloat16 are in test_experiments_scale.py; ``run_module``,
``stage_config`` and the session's trained runlocal model (``trained_similarity``) are in conftest.py.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, SALIENCY, run_module, stage_config


def test_bad_config_argument_fails_at_start(tmp_path):
    from experiments import sane
    from experiments.stages import load_config

    with pytest.raises(ValueError, match="unknown config argument 'nonsense'; known: runlocal"):
        sane.run(load_config("experiments/configs/sane_shapes.py:nonsense"), str(tmp_path))
    assert not list(tmp_path.iterdir())


def test_sane_checks_every_stage_before_the_first_one_starts(tmp_path):
    """``--config.stages.saliency.num_pairs=-1`` was found only after the similarity model had trained."""
    from experiments import sane

    config = stage_config("experiments/configs/sane_shapes.py:runlocal")
    with config.unlocked():
        config.stages.saliency.num_pairs = -1
    with pytest.raises(ValueError, match="stage saliency .*config.stages.saliency.*num_pairs"):
        sane.run(config, str(tmp_path / "w"))
    config = stage_config("experiments/configs/sane_shapes.py:runlocal")
    with config.unlocked():
        config.stages.similarity = {"learning_rat": 0.1}
    with pytest.raises(ValueError, match="stage similarity .*config.stages.similarity.learning_rat: the config has no"):
        sane.run(config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_configs_are_locked_and_typed():
    from experiments.configs.common import parse_arg
    from experiments.stages import load_config

    config = load_config("experiments/configs/similarity_shapes.py:runlocal")
    with pytest.raises(AttributeError, match="learning_rat"):
        config.learning_rat = 0.1  # a misspelt field fails
    args = parse_arg("runlocal,size=32", runlocal=False, size=64, name="x")
    assert args.runlocal is True and args.size == 32 and args.name == "x"
    with pytest.raises(ValueError, match="config argument 'size=big'"):
        parse_arg("size=big", size=64)
    with pytest.raises(ValueError, match="unknown config argument 'sise'; known: size"):
        parse_arg("sise=3", size=64)


def test_train_similarity_runlocal_reaches_auc(trained_similarity):
    tmp_path = trained_similarity
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test_pair_auc"] >= 0.80
    assert results["steps"] == 200 and results["seconds"] > 0
    assert os.path.isdir(results["checkpoint_dir"]) and (tmp_path / "checkpoints" / "config.json").exists()
    assert [h["step"] for h in results["history"]] == [100, 200]


@pytest.mark.parametrize("field,value,message", [
    ("dataset", "imagenet", "dataset must be one of"),
    ("embedding_dim", 0, "embedding_dim"),
    ("dataset", "awa2", "manual_dir"),
    ("model", "vgg", "model must be one of"),
    ("param_sharding", "zero3", "param_sharding must be one of"),
    ("mesh_devices", 3, "mesh_devices must be >= 1 and divide batch_size"),
])
def test_train_similarity_bad_config_is_refused(field, value, message):
    """In-process: the check train_similarity runs before building anything."""
    from experiments import validation
    from experiments.configs import similarity_shapes

    config = similarity_shapes.get_config("runlocal")
    validation.check_similarity_config(config)
    config[field] = value
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        validation.check_similarity_config(config)


def test_train_similarity_bad_config_fails_at_start(tmp_path):
    """run() checks before it builds; on the command line, an override of a field the config does
    not have is named (it was a bare KeyError)."""
    from experiments import train_similarity

    config = stage_config("experiments/configs/similarity_shapes.py:runlocal", mesh_devices=3)
    with pytest.raises(ValueError, match="mesh_devices must be >= 1 and divide batch_size"):
        train_similarity.run(config, str(tmp_path))
    proc = run_module("experiments.train_similarity", "--config=experiments/configs/similarity_shapes.py:runlocal",
                      f"--workdir={tmp_path}", "--config.learning_rat=0.1")
    assert proc.returncode != 0 and "--config override names a field the config does not have" in proc.stderr
    assert not (tmp_path / "tfds").exists() and not (tmp_path / "checkpoints").exists()


def test_saliency_eval_runlocal_has_every_row(saliency_on_one_device):
    tmp_path, summary = saliency_on_one_device
    results = json.loads((tmp_path / "results.json").read_text())
    assert summary == results
    rows = {(r["method"], r["reference"]) for r in results["rows"]}
    expected = {(m, ref) for m in ("rise", "sliding_window", "lime", "perturbation") for ref in ("fixed", "variable")}
    expected |= {("gradient", "fixed"), ("integrated_gradients", "fixed"), ("random", "fixed")}
    assert rows == expected and results["num_pairs"] == 8
    for r in results["rows"]:
        assert 0 <= r["insertion_auc"] <= 100 and 0 <= r["deletion_auc"] <= 100
        assert 0 <= r["pointing_accuracy"] <= 1 and 0 <= r["mass_on_key"] <= 1 and r["seconds_per_pair"] > 0
    assert "| rise | fixed |" in (tmp_path / "results.md").read_text()
    for name in ("curves.png", "gallery.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG" and (tmp_path / name).stat().st_size > 10_000


def test_saliency_eval_rejects_bad_rows(tmp_path):
    from experiments import saliency_eval, validation

    with pytest.raises(ValueError, match="bad row 'shap:fixed'"):
        saliency_eval.run(stage_config(SALIENCY, rows=["shap:fixed"]), str(tmp_path))
    with pytest.raises(TypeError, match="field 'rows'"):  # a tuple field: no comma string split by hand
        stage_config(SALIENCY, rows="rise:fixed,random:fixed")
    with pytest.raises(ValueError, match="config.rows must be a list or tuple"):
        validation.parse_rows("rise:fixed,random:fixed")
    assert not list(tmp_path.iterdir())


def test_train_attributes_runlocal_reports_both_lambdas(trained_attributes):
    results = json.loads((trained_attributes / "results.json").read_text())
    assert [r["lambda"] for r in results["runs"]] == [0.0, 0.1] and results["seed"] == 0
    for run in results["runs"]:
        assert 0 < run["test_map"] <= 100 and run["best_epoch"] >= 1
    shards = sorted(p.name for p in (trained_attributes / "saliency_cache").iterdir())
    assert shards == ["meta.json", "shard_0000000.npz", "shard_0000100.npz"]


def test_command_line_errors_are_one_line_from_any_folder(tmp_path):
    """A correct error used to arrive as the last line of a long traceback (or after the module's
    docstring and every flag), and experiments failed outside the repository's folder."""
    def command(module, *args):
        return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600, env=dict(os.environ, PYTHONPATH=""))

    config = f"--config={ROOT}/experiments/configs/correspondence_shapes.py:runlocal"
    proc = command("experiments.correspondence_eval", config, f"--workdir={tmp_path / 'w'}", "--config.num_pairs=1")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and lines == [
        "error: config.num_pairs must be >= 2 (half of them positive), got 1 (--verbose shows where)"], proc.stderr
    proc = command("experiments.correspondence_eval", config, f"--workdir={tmp_path / 'w'}", "--config.num_pairs=1",
                   "--verbose")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "check_config" in proc.stderr
    (tmp_path / "pairs.txt").write_text("a b\n")
    proc = command("experiments.explain", f"--checkpoint={tmp_path / 'missing'}", f"--pairs={tmp_path / 'pairs.txt'}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "missing" in lines[0]


def test_help_lists_the_command_line_flags():
    """``--help`` listed no flag: they are defined in experiments.stages, not in the entry point."""
    proc = run_module("experiments.shapes_contact_sheet", "--help")  # absl's --help exits with status 1
    for flag in ("--config: the config file (experiments/configs/shapes_contact_sheet.py[:ARG])", "--workdir:",
                 "--[no]verbose:", "--compilation_cache: JAX's persistent compilation cache"):
        assert flag in proc.stdout, proc.stdout


def test_train_attributes_and_explain_attributes_command_lines_check_before_building(tmp_path):
    """Their flags path, once each: tuple fields are overridden as tuples and checked at start."""
    for module, config, override, message in (
            ("train_attributes", "attributes_shapes", "--config.lambdas=(0.0, -1.0)",
             "config.lambdas must be non-negative numbers"),
            ("explain_attributes", "explain_attributes_shapes", "--config.weights=(0.0, 2.0)",
             "config.weights must be numbers in [0, 1]")):
        proc = run_module(f"experiments.{module}", f"--config=experiments/configs/{config}.py:runlocal",
                          f"--workdir={tmp_path / module}", override)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-3000:]
        assert not (tmp_path / module).exists()


def test_shapes_contact_sheet_command_line(tmp_path, shapes32_dir):
    proc = run_module("experiments.shapes_contact_sheet", "--config=experiments/configs/shapes_contact_sheet.py:runlocal",
                      f"--workdir={tmp_path}", f"--config.data_dir={shapes32_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["dataset"] == "shapes/32px" and results["num_examples"] == 20
    assert sum(results["class_counts"].values()) == 20
    assert (tmp_path / "contact_sheet.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def sane_run(tmp_path_factory, shapes32_dir, trained_similarity, trained_attributes):
    """The main job, runlocal, reusing the session's trained similarity model and attribute predictors
    as its first and third stages (sane skips a stage whose folder holds results); its saliency and
    explanation stages run here."""
    from experiments import sane

    workdir = tmp_path_factory.mktemp("sane")
    shutil.copytree(trained_similarity, workdir / "similarity")
    shutil.copytree(trained_attributes, workdir / "attributes")
    config = stage_config("experiments/configs/sane_shapes.py:runlocal", data_dir=shapes32_dir)
    with config.unlocked():
        config.stages.saliency.mesh_devices = 1  # one device, as the command line has
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        sane.run(config, str(workdir))
    return workdir, stdout.getvalue()


def test_explain_attributes_runlocal_rows(sane_run):
    """The explanation stage of the runlocal main job: explain_attributes' runlocal config as it is
    (the job's explanation stage overrides nothing), run in-process by sane."""
    tmp_path = sane_run[0] / "explanations"
    results = json.loads((tmp_path / "results.json").read_text())
    settings = [(r["selector"], r["w"], r["concept"], r["scorer"], r["presence"]) for r in results["rows"]]
    weights = [0.0, 0.25, 0.5, 0.75, 1.0]
    # each fit with the scorers it supports: leace once (label fits erase the same), shift where the fit keeps shifts,
    # gradient for the mlp probe's network
    combos = ([("pattern", x) for x in ("removal", "product", "leace", "shift", "cells")]
              + [(m, x) for m in ("ridge", "fastcav") for x in ("removal", "product", "cells")]
              + [("edits", x) for x in ("removal", "product", "shift", "cells")]
              + [("mlp", x) for x in ("removal", "product", "cells", "gradient")])
    assert settings == ([("paper", w, None, None, None) for w in weights]
                        + [("pair_aware", w, None, None, None) for w in weights]
                        + [("concept", w, m, x, "soft") for m, x in combos for w in weights]
                        + [("concept", 0.0, "pattern", x, "both") for x in ("removal", "product", "leace", "shift")]
                        + [("random", None, None, None, None)])
    for r in results["rows"]:
        assert 0 <= r["gt_top1"] <= r["gt_top3"] <= 1 and 0 <= r["oracle_agreement"] <= 1
        # agreeing with the oracle is a ratio of 1: at least as many pairs reach 0.9 as agree
        assert r["oracle_agreement"] <= r["regret_at_least_0.9"] <= 1 and r["regret_ratio"] is not None
        assert r["shortcut_followed"] is None and r["shortcut_followed_pairs"] == 0  # no shortcut in this dataset
    assert "| regret ratio | regret ratio >= 0.9 |" in (tmp_path / "results.md").read_text()
    # the oracle names one of the key object's attributes; its proxies are scored against it
    names = results["oracle_names"]
    assert names["class_attribute"] + names["other"] == pytest.approx(1.0) and names["shortcut"] is None
    assert set(results["faithfulness"]) == {"embedding_removal", "region_removal"}
    assert results["concepts"]["split"] == "train" and results["concepts"]["fitted"] > 0  # never test
    assert set(results["concepts"]["fitted_by_method"]) == {"ridge", "fastcav", "pattern", "edits", "mlp"}
    assert results["gallery_selector"] == "concept selector (pattern directions, removal scorer, soft presence)"
    assert results["concepts"]["cell_fraction"] == 0.1
    assert set(results["map"]) == {"lambda=0", "lambda=0.1"}
    assert (tmp_path / "gallery.png").read_bytes()[:4] == b"\x89PNG"
    # the gallery's pairs, explained as correspondences: exact for the trained pooled model
    corr = results["correspondences"]
    assert corr["method"] == "pooled_pair" and (tmp_path / corr["figure"]).read_bytes()[:4] == b"\x89PNG"
    assert len(corr["pairs"]) >= 1 and all(len(p) == corr["top_k"] for p in corr["pairs"])
    assert results["gallery_selector"].startswith("concept selector")


def test_sane_runlocal_writes_report_and_results(sane_run):
    workdir, stdout = sane_run
    results = json.loads((workdir / "results.json").read_text())
    assert set(results) >= {"similarity", "saliency", "attributes", "explanations"}
    assert {r["method"] for r in results["saliency"]["rows"]} == {"rise", "sliding_window", "lime", "random"}
    page = (workdir / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "http://" not in page and "https://" not in page
    assert "Which part matches which" in page and "pair-aware selector" not in page
    assert "<th>scorer</th><th>presence</th>" in page  # each attribute row says which scorer and presence rule
    assert "report" in stdout and str(workdir / "report.html") in stdout


def test_sane_refuses_a_finished_stage_under_other_settings(sane_run, shapes32_dir):
    """A finished workdir used to ignore changed stage settings (even invalid ones) and rewrite the old report."""
    from experiments import sane

    workdir, _ = sane_run
    before = sorted((str(p), p.stat().st_mtime_ns) for p in workdir.rglob("*") if p.is_file())
    config = stage_config("experiments/configs/sane_shapes.py:runlocal", data_dir=shapes32_dir)
    with config.unlocked():
        config.stages.saliency.mesh_devices = 1
        config.stages.explanations.num_pairs = 5
    with pytest.raises(ValueError, match=r"stage experiments.explain_attributes in .*explanations ran with other "
                                         r"settings \(num_pairs: 8 -> 5\)"):
        sane.run(config, str(workdir))
    assert sorted((str(p), p.stat().st_mtime_ns) for p in workdir.rglob("*") if p.is_file()) == before


def test_a_refused_training_rerun_leaves_the_workdir_byte_identical(tmp_path, trained_similarity, shapes32_dir):
    """Rerunning train_similarity on a finished workdir with another num_steps overwrote config.json
    before being refused: the trained model could no longer be loaded."""
    import hashlib

    from experiments import train_similarity
    from simexplain_jax.models.loading import load_trained

    workdir = tmp_path / "similarity"
    shutil.copytree(trained_similarity, workdir)
    listing = lambda: sorted((str(p.relative_to(workdir)), hashlib.sha256(p.read_bytes()).hexdigest())  # noqa: E731
                             for p in workdir.rglob("*") if p.is_file())
    before = listing()
    config = stage_config("experiments/configs/similarity_shapes.py:runlocal", data_dir=shapes32_dir, num_steps=201)
    with pytest.raises(ValueError, match="trained with another config .*num_steps: 200 when trained, 201 now"):
        train_similarity.run(config, str(workdir))
    assert listing() == before
    load_trained(str(workdir / "checkpoints"))  # still loads


def test_sane_rerun_reuses_every_stage(sane_run, shapes32_dir):
    """The command line: every stage is done, so none runs again."""
    workdir, _ = sane_run
    stamps = {p: p.stat().st_mtime for p in workdir.glob("*/results.json")}
    proc = run_module("experiments.sane", "--config=experiments/configs/sane_shapes.py:runlocal",
                      f"--workdir={workdir}", f"--config.data_dir={shapes32_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.stat().st_mtime for p in workdir.glob("*/results.json")} == stamps and len(stamps) == 4


def test_saliency_eval_resumes_from_its_cache(tmp_path, shapes32_dir, trained_similarity):
    from experiments import saliency_eval

    def run():
        saliency_eval.run(stage_config(SALIENCY, data_dir=shapes32_dir, similarity_workdir=str(trained_similarity),
                                       rows=["rise:fixed"], mesh_devices=1), str(tmp_path))

    run()
    first = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    cached = sorted((tmp_path / "cache" / "rise").glob("q*.npz"))
    assert cached
    cached[-1].unlink()  # as if the run had been killed before its last query (so before the row was recorded)
    (tmp_path / "rows" / "rise.npz").unlink()
    stamps = {p: p.stat().st_mtime for p in cached[:-1]}
    run()
    assert {p: p.stat().st_mtime for p in cached[:-1]} == stamps and cached[-1].exists()
    again = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    assert again["insertion_auc"] == pytest.approx(first["insertion_auc"], rel=1e-5)


def test_report_renders_in_headless_chromium(sane_run, tmp_path):
    browser = shutil.which("chromium")
    if browser is None:  # `make test` installs Debian's chromium where it can (root with apt-get)
        pytest.skip("chromium is not installed (make test installs it with apt-get when run as root)")
    workdir, _ = sane_run
    shot = tmp_path / "report.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                           "--window-size=1400,2400", f"--screenshot={shot}", f"file://{workdir / 'report.html'}"],
                          capture_output=True, text=True, timeout=120)
    console_errors = [line for line in proc.stderr.splitlines() if "CONSOLE" in line and "rror" in line]
    assert not console_errors, console_errors
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (2400, 1400) and image.std() > 20  # not a blank page: the gallery is there


@pytest.mark.parametrize("variant", [None, "runlocal"])
def test_every_config_loads_and_sane_overrides_name_real_fields(variant):
    from experiments.stages import load_config, override

    names = [f[:-3] for f in os.listdir(os.path.join(ROOT, "experiments", "configs"))
             if f.endswith(".py") and f not in ("__init__.py", "common.py")]
    configs = {n: load_config(f"{n}:{variant}" if variant else n) for n in names}
    sane = configs["sane_shapes"]
    for stage, field in (("similarity", "similarity_config"), ("saliency", "saliency_config"),
                         ("attributes", "attributes_config"), ("explanations", "explain_config")):
        target = load_config(getattr(sane, field))
        assert target == configs[os.path.basename(getattr(sane, field).split(":")[0])[:-3]]
        # sets every override, raising on one that names a field the stage's config does not have
        override(target, getattr(sane.stages, stage), where=f"sane stage {stage}")


def test_the_full_demo_runs_every_stage_at_its_own_configs_size(tmp_path):
    from experiments import sane
    from experiments.stages import load_config

    plan = sane.stage_plan(load_config("experiments/configs/sane_shapes.py:full"), str(tmp_path))
    for name, field in (("similarity", "similarity_shapes"), ("saliency", "saliency_shapes"),
                        ("attributes", "attributes_shapes"), ("explanations", "explain_attributes_shapes")):
        own = load_config(field).to_dict()
        planned = plan[name][1].to_dict()
        # only the links sane sets (the data folder and the earlier stages' folders) differ
        assert {k for k in own if own[k] != planned[k]} <= {"data_dir", "similarity_workdir", "attributes_workdir"}
    demo = sane.stage_plan(load_config("experiments/configs/sane_shapes.py"), str(tmp_path))
    assert demo["saliency"][1].num_pairs < plan["saliency"][1].num_pairs
    with pytest.raises(ValueError, match="runlocal and full exclude each other"):
        load_config("experiments/configs/sane_shapes.py:runlocal,full")
