"""The repository stands alone: the reference files ship inside the package, the configs of the real
datasets find them from any working directory, and no tracked file points outside the checkout."""

import importlib
import os
import subprocess

import pytest

from simexplain_jax.data import pairs, reference_files
from simexplain_jax.data.datasets import explanation_pair_list, similarity_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_CONFIGS = ("similarity_awa2", "similarity_polyvore", "saliency_awa2", "saliency_polyvore")
# built by concatenation so that this file does not contain them itself
FORBIDDEN = (".." + "/" + "shared", "shared" + "/")


def test_no_tracked_file_points_outside_the_checkout():
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    names = [n for n in listed.decode().split("\0") if n]
    assert "simexplain_jax/data/reference_files.py" in names  # the listing is this repository's
    offending = []
    for name in names:
        path = os.path.join(ROOT, name)
        if not os.path.isfile(path):  # deleted in the working tree, or a submodule
            continue
        with open(path, "rb") as f:
            content = f.read()
        if b"\0" in content:  # binary
            continue
        text = content.decode("utf-8", errors="replace")
        offending += [f"{name}: {s!r}" for s in FORBIDDEN if s in text]
    assert not offending, "tracked files name a folder outside the repository:\n" + "\n".join(offending)


def test_every_packaged_file_is_there_and_declared_as_package_data():
    for name in reference_files.FILES:
        assert reference_files.reference_path(name).is_file()
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert '"simexplain_jax.data" = ["reference/*.txt"]' in f.read()  # else a wheel would leave them out


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_real_dataset_configs_find_the_packaged_pairs_from_any_directory(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = importlib.import_module(f"experiments.configs.{name}").get_config()
    dataset = "awa2" if "awa2" in name else "polyvore_outfits"
    assert config.test_pairs == f"reference:{dataset}_test"
    reference_files.check_pair_file(config.test_pairs)
    assert len(reference_files.read_pair_file(config.test_pairs)) == 20000


def test_a_user_pair_file_overrides_the_packaged_one(shapes32_dir, tmp_path):
    """On shapes, whose records carry image ids, a pair file picks the pairs (balanced, in file order)."""
    listed = explanation_pair_list("shapes/32px", data_dir=shapes32_dir, num_pairs=4)
    ids = [listed.source[i]["image_id"].decode() for i in range(6)]
    written = [(ids[0], ids[1], 0), (ids[2], ids[3], 1), (ids[4], ids[5], 0), (ids[1], ids[2], 1),
               (ids[3], ids[4], 0), (ids[5], ids[0], 1)]
    path = tmp_path / "mine.txt"
    pairs.write_pairs(path, written)
    chosen = explanation_pair_list("shapes/32px", data_dir=shapes32_dir, num_pairs=4, test_pairs=str(path))
    assert chosen.pairs.tolist() == [[0, 1], [2, 3], [4, 5], [1, 2]]  # the first two of each label
    assert chosen.labels.tolist() == [0, 1, 0, 1]
    data = similarity_data("shapes/32px", data_dir=shapes32_dir, num_eval_pairs=4, test_pairs=str(path))
    assert data.test.pairs.tolist() == [[0, 1], [2, 3], [4, 5], [1, 2], [3, 4], [5, 0]]
    assert data.test.labels.tolist() == [0, 1, 0, 1, 0, 1]


def test_a_missing_pair_file_fails_before_the_dataset_is_built(tmp_path):
    for build in (explanation_pair_list, similarity_data):
        with pytest.raises(FileNotFoundError, match="test_pairs '/nonexistent' does not exist"):
            build("shapes/32px", data_dir=str(tmp_path / "tfds"), test_pairs="/nonexistent")
    assert not (tmp_path / "tfds").exists()


@pytest.mark.parametrize("module,config", [("saliency_eval", "saliency_awa2"), ("train_similarity", "similarity_awa2")])
def test_experiments_name_a_missing_pair_file_at_start(module, config, tmp_path):
    from experiments.stages import load_config, override

    experiment = importlib.import_module(f"experiments.{module}")
    settings = override(load_config(f"experiments/configs/{config}.py"),
                        {"manual_dir": str(tmp_path), "test_pairs": "/nonexistent"})
    with pytest.raises(FileNotFoundError, match="config.test_pairs '/nonexistent' does not exist"):
        experiment.run(settings, str(tmp_path / "work"))
    assert not (tmp_path / "work" / "tfds").exists()
