"""The experiment entry points run end to end with their runlocal configs (in a subprocess)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_sane_demo_runlocal_writes_results_and_figure(tmp_path, shapes32_dir):
    proc = run_module("experiments.sane", "--config=experiments/configs/sane_shapes.py:runlocal",
                      f"--workdir={tmp_path}", f"--config.data_dir={shapes32_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["num_pairs"] == 2
    for method in ("rise", "sliding_window"):
        for metric in ("insertion_auc", "deletion_auc"):
            assert 0.0 <= results["summary"][method][metric] <= 100.0
    png = (tmp_path / "pairs.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "| rise |" in (tmp_path / "results.md").read_text()


def test_bad_config_argument_fails_at_start(tmp_path):
    proc = run_module("experiments.sane", "--config=experiments/configs/sane_shapes.py:nonsense",
                      f"--workdir={tmp_path}")
    assert proc.returncode != 0 and "nonsense" in proc.stderr


@pytest.fixture(scope="module")
def trained_similarity(tmp_path_factory, shapes32_dir):
    """The runlocal similarity model, trained once for this module's tests."""
    workdir = tmp_path_factory.mktemp("similarity")
    proc = run_module("experiments.train_similarity", "--config=experiments/configs/similarity_shapes.py:runlocal",
                      f"--workdir={workdir}", f"--config.data_dir={shapes32_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_train_similarity_runlocal_reaches_auc(trained_similarity):
    tmp_path = trained_similarity
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test_pair_auc"] >= 0.80
    assert results["steps"] == 600 and results["seconds"] < 180
    assert os.path.isdir(results["checkpoint_dir"]) and (tmp_path / "checkpoints" / "config.json").exists()
    assert [h["step"] for h in results["history"]] == [200, 400, 600]


@pytest.mark.parametrize("override,message", [
    ("--config.dataset=imagenet", "dataset must be one of"),
    ("--config.embedding_dim=0", "embedding_dim"),
    ("--config.dataset=awa2", "manual_dir"),
    ("--config.model=vgg", "model must be one of"),
])
def test_train_similarity_bad_config_fails_at_start(tmp_path, override, message):
    proc = run_module("experiments.train_similarity", "--config=experiments/configs/similarity_shapes.py:runlocal",
                      f"--workdir={tmp_path}", override)
    assert proc.returncode != 0 and message in proc.stderr
    assert not (tmp_path / "tfds").exists() and not (tmp_path / "checkpoints").exists()


def test_saliency_eval_runlocal_has_every_row(tmp_path, shapes32_dir, trained_similarity):
    proc = run_module("experiments.saliency_eval", "--config=experiments/configs/saliency_shapes.py:runlocal",
                      f"--workdir={tmp_path}", f"--config.data_dir={shapes32_dir}",
                      f"--config.similarity_workdir={trained_similarity}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
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
    proc = run_module("experiments.saliency_eval", "--config=experiments/configs/saliency_shapes.py:runlocal",
                      f"--workdir={tmp_path}", "--config.rows=shap:fixed")
    assert proc.returncode != 0 and "bad row" in proc.stderr


@pytest.fixture(scope="module")
def trained_attributes(tmp_path_factory, shapes32_dir, trained_similarity):
    workdir = tmp_path_factory.mktemp("attributes")
    proc = run_module("experiments.train_attributes", "--config=experiments/configs/attributes_shapes.py:runlocal",
                      f"--workdir={workdir}", f"--config.data_dir={shapes32_dir}",
                      f"--config.similarity_workdir={trained_similarity}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_train_attributes_runlocal_reports_both_lambdas(trained_attributes):
    results = json.loads((trained_attributes / "results.json").read_text())
    assert [r["lambda"] for r in results["runs"]] == [0.0, 0.1] and results["seed"] == 0
    for run in results["runs"]:
        assert 0 < run["test_map"] <= 100 and run["best_epoch"] >= 1
    shards = sorted(p.name for p in (trained_attributes / "saliency_cache").iterdir())
    assert shards == ["meta.json", "shard_0000000.npz", "shard_0000100.npz"]


def test_explain_attributes_runlocal_rows(tmp_path, shapes32_dir, trained_attributes):
    proc = run_module("experiments.explain_attributes",
                      "--config=experiments/configs/explain_attributes_shapes.py:runlocal", f"--workdir={tmp_path}",
                      f"--config.data_dir={shapes32_dir}", f"--config.attributes_workdir={trained_attributes}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    settings = [(r["selector"], r["w"]) for r in results["rows"]]
    weights = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert settings == [("paper", w) for w in weights] + [("pair_aware", w) for w in weights] + [("random", None)]
    for r in results["rows"]:
        assert 0 <= r["gt_top1"] <= r["gt_top3"] <= 1 and 0 <= r["oracle_agreement"] <= 1
    assert set(results["map"]) == {"lambda=0", "lambda=0.1"}
    assert (tmp_path / "gallery.png").read_bytes()[:4] == b"\x89PNG"
