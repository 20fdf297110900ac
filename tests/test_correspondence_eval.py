"""experiments.correspondence_eval end to end on the runlocal model (in-process)."""

import json

import pytest
from conftest import stage_config

CONFIG = "experiments/configs/correspondence_shapes.py:runlocal"


def test_correspondence_eval_runlocal(tmp_path, shapes32_dir, trained_similarity, capsys):
    from experiments import correspondence_eval

    summary = correspondence_eval.run(stage_config(CONFIG, data_dir=shapes32_dir,
                                                   similarity_workdir=str(trained_similarity)), str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert summary == results and results["num_pairs"] == 4
    rows = {r["method"]: r for r in results["rows"]}
    assert list(rows) == ["pooled_pair", "rise_pair_250", "integrated_cross_jacobian", "rise", "random"]
    for name, row in rows.items():
        assert 0 <= row["first_order_pointing"] <= 1 and 0 <= row["first_order_insertion_auc"] <= 100
        assert row["seconds_per_pair"] > 0
        if name != "rise":
            assert 0 <= row["correspondence_pointing"] <= 1 and 0 <= row["correspondence_mass"] <= 1
            assert 0 <= row["second_order_insertion_auc"] <= 100 and 0 <= row["second_order_deletion_auc"] <= 100
            assert 0 <= row["reference_pointing"] <= 1 and 0 <= row["reference_insertion_auc"] <= 100
    assert "correspondence_pointing" not in rows["rise"] and "reference_pointing" not in rows["rise"]
    assert rows["pooled_pair"]["passes_per_pair"] == 2 and rows["rise_pair_250"]["passes_per_pair"] == 64
    assert "| pooled_pair |" in (tmp_path / "results.md").read_text()
    progress = capsys.readouterr().err  # a progress bar per row, over its pairs
    for name in rows:
        assert f"{name}: 100%" in progress and "4/4" in progress, name


def test_correspondence_eval_bad_config_fails_before_any_work(tmp_path):
    from experiments import correspondence_eval

    config = stage_config(CONFIG, rows=("pooled_pair", "nonsense"))
    with pytest.raises(ValueError, match="config.rows names 'nonsense'"):
        correspondence_eval.run(config, str(tmp_path))
    config = stage_config(CONFIG)
    config.methods.rise_pair_250.num_masks = 0
    with pytest.raises(ValueError, match="num_masks"):
        correspondence_eval.run(config, str(tmp_path))
    config = stage_config(CONFIG)
    config.methods.rise_pair_250.method = "rise_pairs"
    with pytest.raises(ValueError, match="method must be one of"):
        correspondence_eval.run(config, str(tmp_path))
    assert not any(tmp_path.iterdir())
